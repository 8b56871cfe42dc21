//! Decode: image bytes → upright RGB pixels. JPEG, PNG, WebP, GIF (first frame) and BMP;
//! EXIF orientation applied; alpha composited onto white. Nothing else is accepted.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;

/// Largest image (in pixels) we agree to decode; bigger ones are refused from the header.
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
    #[error("image is too large: {width}×{height} pixels (limit {MAX_PIXELS})")]
    TooLarge { width: u32, height: u32 },
    #[error("corrupt or truncated {format} image: {reason}")]
    Corrupt { format: String, reason: String },
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

/// Decodes `bytes`, sniffing the format from the content (never from a file name).
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
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
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt {
            format: name,
            reason: "zero-sized image".into(),
        });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    // Orientation is best effort: a broken EXIF block should not make a good image unusable.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(flatten_onto_white(img))
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
