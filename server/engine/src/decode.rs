//! Decode: image bytes → upright RGB pixels. JPEG, PNG, WebP, GIF and BMP (animations: the
//! first frame); EXIF orientation applied; alpha composited onto white; 16-bit and CMYK
//! converted to 8-bit RGB. Nothing else is accepted, and nothing is decoded before the header
//! says the image fits the pixel limit (decompression bombs are refused unread).
//!
//! [`decode_for`] decodes for a model that first shrinks the shorter side to a known size: a
//! JPEG at least four times that size is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain by
//! libjpeg-turbo, keeping its shorter side at [`DCT_MARGIN`] × that size or more (PIL's
//! `Image.draft` reduces as far as the size itself, which [`decode_reduced`] can do too), so a
//! 12-megapixel photo never becomes 36 MB of pixels that the resize throws away. Anything libjpeg-turbo declines (CMYK, lossless, a
//! warning about corrupt data) takes the full-size path, so every image the full-size path
//! decodes is decoded, and damage libjpeg-turbo notices is judged by the same decoder as before.

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::cell::RefCell;
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

/// An image decoded for a model: its pixels, possibly reduced, and its full size.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Upright RGB pixels. For a large JPEG, already reduced by a power of two, with the shorter
    /// side still at least the size asked for.
    pub image: RgbImage,
    /// The full image's upright width, whatever `image` was reduced to.
    pub width: u32,
    /// The full image's upright height.
    pub height: u32,
}

/// Decodes `bytes` under the default pixel limit; see [`decode_limited`].
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_limited(bytes, MAX_PIXELS)
}

/// Decodes `bytes`, sniffing the format from the content (never from a file name), refusing
/// images of more than `max_pixels` pixels before any pixel is decoded.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    decode_inner(bytes, max_pixels, None).map(|d| d.image)
}

/// How much larger than the model's resize a DCT-reduced JPEG stays: reducing to just the
/// resize (a box filter all the way) moved EfficientNet-Lite0 embeddings of 12 MP photos to a
/// mean cosine of 0.992 (min 0.944) from the full-size path's; keeping twice the resize and
/// letting the antialiased bicubic do the last octave keeps 0.9987 (min 0.989) for about 20 %
/// less decode speed (35.7 against 44.6 images/s, `bench/decode.sh`).
pub const DCT_MARGIN: u32 = 2;

/// Decodes `bytes` like [`decode_limited`] for a model whose preprocessing first resizes the
/// shorter side to `resize_shorter`: a JPEG is reduced in the DCT domain as far as
/// [`DCT_MARGIN`] × that allows (see [`decode_reduced`]). Other formats decode at full size.
pub fn decode_for(
    bytes: &[u8],
    max_pixels: u64,
    resize_shorter: u32,
) -> Result<Decoded, DecodeError> {
    decode_reduced(bytes, max_pixels, DCT_MARGIN.saturating_mul(resize_shorter))
}

/// Decodes `bytes` like [`decode_limited`], a JPEG whose shorter side is at least 2×, 4× or 8×
/// `shorter` at that fraction in the DCT domain (see the module's notes).
pub fn decode_reduced(bytes: &[u8], max_pixels: u64, shorter: u32) -> Result<Decoded, DecodeError> {
    decode_inner(bytes, max_pixels, Some(shorter))
}

fn decode_inner(
    bytes: &[u8],
    max_pixels: u64,
    shorter: Option<u32>,
) -> Result<Decoded, DecodeError> {
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
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (upright_w, upright_h) = match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    };
    let scaled = match (format, shorter) {
        (ImageFormat::Jpeg, Some(side)) => match dct_denominator(width.min(height), side) {
            1 => None,
            denom => jpeg_scaled(bytes, denom, (width, height)),
        },
        _ => None,
    };
    let mut img = match scaled {
        Some(small) => DynamicImage::ImageRgb8(small),
        None => DynamicImage::from_decoder(decoder).map_err(corrupt)?,
    };
    img.apply_orientation(orientation);
    Ok(Decoded {
        image: flatten_onto_white(img),
        width: upright_w,
        height: upright_h,
    })
}

/// The largest of 8, 4 and 2 that keeps a shorter side of `have` pixels at `want` or more after
/// libjpeg's scaling (which rounds up), else 1.
fn dct_denominator(have: u32, want: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|d| have.div_ceil(*d) >= want.max(1))
        .unwrap_or(1)
}

/// Decodes a baseline or progressive YCbCr, greyscale or RGB JPEG at 1/`denom` scale with
/// libjpeg-turbo, or `None` when it declines or warns: the caller then decodes at full size, so
/// corrupt data is judged by one decoder only. `size` is the size the header check passed.
fn jpeg_scaled(bytes: &[u8], denom: u32, size: (u32, u32)) -> Option<RgbImage> {
    use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};
    thread_local! {
        // One decompressor per thread: tj3Init allocates its state once, not per image.
        static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Decompressor::new().ok();
        }
        let d = slot.as_mut()?;
        let header = d.read_header(bytes).ok()?;
        let usable = matches!(
            header.colorspace,
            Colorspace::YCbCr | Colorspace::Gray | Colorspace::RGB
        ) && !header.is_lossless
            && (header.width, header.height) == (size.0 as usize, size.1 as usize);
        if !usable {
            return None;
        }
        let scale = ScalingFactor::new(1, denom as usize);
        d.set_scaling_factor(scale).ok()?;
        let out = header.scaled(scale);
        let mut pixels = vec![0u8; 3 * out.width * out.height];
        let image = Image {
            pixels: &mut pixels[..],
            width: out.width,
            pitch: 3 * out.width,
            height: out.height,
            format: PixelFormat::RGB,
        };
        if d.decompress(bytes, image).is_err() {
            // A handle that failed mid-image is not reused.
            *slot = None;
            return None;
        }
        RgbImage::from_raw(out.width as u32, out.height as u32, pixels)
    })
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

    /// A JPEG of `w`×`h` with detail at every scale (so a wrong scale or orientation shows).
    fn pattern_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                if (x / 37 + y / 53) % 2 == 0 { 40 } else { 220 },
            ])
        });
        let mut buf = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&img)
            .unwrap();
        buf.into_inner()
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn dct_scale_keeps_the_shorter_side_covered() {
        assert_eq!(dct_denominator(3000, 256), 8); // 375
        assert_eq!(dct_denominator(2048, 256), 8); // exactly 256
        assert_eq!(dct_denominator(2047, 256), 8); // 255.9, rounded up to 256
        assert_eq!(dct_denominator(2040, 256), 4); // 255 at 1/8
        assert_eq!(dct_denominator(600, 256), 2);
        assert_eq!(dct_denominator(511, 256), 2); // 255.5, rounded up
        assert_eq!(dct_denominator(510, 256), 1);
        assert_eq!(dct_denominator(100, 256), 1);
    }

    #[test]
    fn large_jpeg_is_decoded_reduced_and_close_to_full_size() {
        let bytes = pattern_jpeg(2000, 1200);
        let d = decode_reduced(&bytes, MAX_PIXELS, 256).unwrap();
        // 1200 / 4 = 300 ≥ 256, 1200 / 8 = 150 < 256.
        assert_eq!(d.image.dimensions(), (500, 300));
        assert_eq!((d.width, d.height), (2000, 1200));
        // Against the full-size decode shrunk by a box filter of the same factor.
        let full = decode(&bytes).unwrap();
        let shrunk =
            image::imageops::resize(&full, 500, 300, image::imageops::FilterType::Triangle);
        let diff = mean_abs_diff(&d.image, &shrunk);
        assert!(diff < 6.0, "mean absolute difference {diff}");
        // Small JPEGs and other formats are decoded whole.
        // The engine's entry keeps the margin: 1200 / 2 = 600 ≥ 2 × 256, 1200 / 4 < 512.
        let d = decode_for(&bytes, MAX_PIXELS, 256).unwrap();
        assert_eq!(d.image.dimensions(), (1000, 600));
        let small = decode_reduced(&pattern_jpeg(400, 300), MAX_PIXELS, 256).unwrap();
        assert_eq!(small.image.dimensions(), (400, 300));
        let png = encode(&DynamicImage::ImageRgb8(full), ImageFormat::Png);
        let png = decode_reduced(&png, MAX_PIXELS, 256).unwrap();
        assert_eq!(png.image.dimensions(), (2000, 1200));
    }

    #[test]
    fn reduced_decode_applies_exif_orientation() {
        let bytes = kadr_testkit::with_app1(
            &pattern_jpeg(1600, 1040),
            &kadr_testkit::exif_orientation_6(),
        );
        let d = decode_reduced(&bytes, MAX_PIXELS, 256).unwrap();
        assert_eq!((d.width, d.height), (1040, 1600));
        assert_eq!(d.image.dimensions(), (260, 400));
        let full = decode(&bytes).unwrap();
        assert_eq!(full.dimensions(), (1040, 1600));
        let shrunk =
            image::imageops::resize(&full, 260, 400, image::imageops::FilterType::Triangle);
        let diff = mean_abs_diff(&d.image, &shrunk);
        assert!(diff < 6.0, "mean absolute difference {diff}");
    }

    #[test]
    fn what_libjpeg_turbo_declines_takes_the_full_size_path() {
        // CMYK: libjpeg-turbo does not convert it to RGB; the image crate does.
        let cmyk = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/cmyk.jpg"),
        )
        .unwrap();
        let d = decode_reduced(&cmyk, MAX_PIXELS, 8).unwrap();
        assert_eq!(d.image.dimensions(), (40, 30));
        assert_eq!(d.image, decode(&cmyk).unwrap());
        // Damaged scan data: whatever the full-size path says, the reduced path says too.
        let mut bytes = pattern_jpeg(1200, 1200);
        let n = bytes.len();
        for b in &mut bytes[n / 2..n / 2 + 64] {
            *b = 0x5A;
        }
        let full = decode(&bytes);
        let reduced = decode_reduced(&bytes, MAX_PIXELS, 256);
        assert_eq!(full.is_ok(), reduced.is_ok(), "{:?}", reduced.err());
        // Limits and refusals are the same as for `decode_limited`.
        let err = decode_reduced(&pattern_jpeg(1200, 1200), 1_000_000, 256).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        assert!(matches!(
            decode_reduced(b"", MAX_PIXELS, 256),
            Err(DecodeError::Empty)
        ));
    }
}
