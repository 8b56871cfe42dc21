//! Decode: image bytes → upright RGB pixels. JPEG, PNG, WebP, GIF and BMP (animations: the
//! first frame); EXIF orientation applied; alpha composited onto white; 16-bit and CMYK
//! converted to 8-bit RGB. Nothing else is accepted, and nothing is decoded before the header
//! says the image fits the pixel limit (decompression bombs are refused unread).

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Default largest image (in pixels) we agree to decode (`MAX_PIXELS`); bigger ones are refused
/// from the header. 100 MP covers the largest phone and camera photos.
pub const MAX_PIXELS: u64 = 100_000_000;

/// Why an image could not be decoded, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a supported image (JPEG, PNG, WebP, GIF or BMP)")]
    Unsupported,
    #[error("{format} images are not supported (use JPEG, PNG, WebP, GIF or BMP)")]
    OtherFormat { format: String },
    #[error("image is too large: {width}×{height} pixels (limit {limit})")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("corrupt or truncated {format} image: {reason}")]
    Corrupt { format: String, reason: String },
}

impl DecodeError {
    /// The HTTP status this refusal answers: 413 too large, 415 not a supported image, 422
    /// unreadable content.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Unsupported | Self::OtherFormat { .. } => 415,
            Self::Empty | Self::Corrupt { .. } => 422,
        }
    }

    /// A short stable name for metrics and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Unsupported | Self::OtherFormat { .. } => "unsupported",
            Self::TooLarge { .. } => "too_large",
            Self::Corrupt { .. } => "corrupt",
        }
    }
}

/// The formats we decode; the rest are refused even if the `image` crate could read them.
fn supported(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
    )
}

/// Decodes `bytes` under the default pixel limit; see [`decode_limited`].
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_limited(bytes, MAX_PIXELS)
}

/// Decodes `bytes`, sniffing the format from the content (never from a file name), refusing
/// images of more than `max_pixels` pixels before any pixel is decoded.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::Unsupported)?;
    if !supported(format) {
        return Err(DecodeError::OtherFormat {
            format: format!("{format:?}"),
        });
    }
    let name = format!("{format:?}");
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format: name.clone(),
        reason: e.to_string(),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey rather than failing.
        return Err(DecodeError::Corrupt {
            format: name,
            reason: "truncated (no end-of-image marker after the image data)".into(),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // The decoders' own allocations (frames, metadata such as EXIF or ICC blocks) stay within
    // what the largest allowed image needs: 4 channels of 16 bits, plus slack.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt {
            format: name,
            reason: "zero-sized image".into(),
        });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    // Orientation is best effort: a broken EXIF block should not make a good image unusable.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(flatten_onto_white(img))
}

/// Whether a JPEG has an end-of-image marker after the start of its first scan. Markers before
/// the scan are walked by their lengths, so an EXIF thumbnail's own end marker does not count;
/// inside scans a 0xFF byte is always followed by 0x00 or a restart marker, so the first
/// `FF D9` after the scan starts is the image's end. Data after it (a phone's motion-photo
/// trailer) is allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            // Fill bytes before a marker.
            0xFF => i += 1,
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => i += 2,
            0xD9 => return false, // end before any scan
            _ => {
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                if marker == 0xDA {
                    let scan = (i + 2 + len).min(bytes.len());
                    return bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
                }
                i += 2 + len;
            }
        }
    }
    false
}

/// Composites any alpha channel onto white and converts to 8-bit RGB.
fn flatten_onto_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            // Rounded integer blend: c·a + 255·(255−a), over 255.
            dst[c] = ((u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgba};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn transparent_png_becomes_white() {
        let mut img = ImageBuffer::from_pixel(4, 3, Rgba([10u8, 20, 30, 0]));
        img.put_pixel(0, 0, Rgba([10, 20, 30, 255]));
        let rgb = decode(&encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png)).unwrap();
        assert_eq!(rgb.dimensions(), (4, 3));
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);
    }

    #[test]
    fn every_supported_format_decodes() {
        let img =
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(8, 5, image::Rgb([200u8, 100, 50])));
        for f in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let rgb = decode(&encode(&img, f)).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert_eq!(rgb.dimensions(), (8, 5), "{f:?}");
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"hello, world"),
            Err(DecodeError::Unsupported)
        ));
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(8, 8, image::Rgb([1u8, 2, 3])));
        let png = encode(&img, ImageFormat::Png);
        let err = decode(&png[..png.len() / 2]).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err}");
        let tiff = b"II*\x00\x08\x00\x00\x00\x00\x00";
        assert!(matches!(decode(tiff), Err(DecodeError::OtherFormat { .. })));
    }
}
