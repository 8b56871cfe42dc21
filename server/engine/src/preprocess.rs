//! Preprocess: upright RGB pixels → the normalised CHW tensor data a backbone expects.
//! One path for every model family, parameterised by [`PreprocessSpec`], reproducing the
//! reference pipeline (torchvision `Resize(shorter side, bicubic)` on PIL, `CenterCrop`,
//! normalise). Batches are preprocessed in parallel on all cores.

use fast_image_resize::{
    images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::RgbImage;
use rayon::prelude::*;

/// How a model wants its input: resize, crop and normalisation in 0–255 pixel units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessSpec {
    /// The shorter side is resized to this (bicubic, antialiased like PIL).
    pub resize_shorter: u32,
    /// Then a centred square crop of this side.
    pub crop: u32,
    /// Per-channel mean, in pixel units (0–255).
    pub mean: [f32; 3],
    /// Per-channel standard deviation, in pixel units (0–255).
    pub std: [f32; 3],
    /// Round the longer side after scaling (the EfficientNet reference) instead of truncating
    /// it (torchvision's `Resize`, used by timm).
    pub round_long_side: bool,
}

impl PreprocessSpec {
    /// timm's ImageNet pipeline at `size` with `crop_pct` (ConvNeXt: 224, 0.875).
    pub fn imagenet(size: u32, crop_pct: f32) -> Self {
        Self {
            resize_shorter: (size as f32 / crop_pct).floor() as u32,
            crop: size,
            mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
            std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
            round_long_side: false,
        }
    }

    /// The EfficientNet-Lite reference: shorter side 256, crop 224, `(x − 127) / 128`.
    pub fn efficientnet_lite() -> Self {
        Self {
            resize_shorter: 256,
            crop: 224,
            mean: [127.0; 3],
            std: [128.0; 3],
            round_long_side: true,
        }
    }

    /// Number of f32 values one preprocessed image occupies (3 × crop × crop).
    pub fn numel(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }
}

/// Resized images larger than this many times `resize_shorter²` (aspect ratios past 16:1) are
/// not resized whole: only the window the crop keeps is. A 1×4,000,000 strip would otherwise be
/// resized to 256×1,024,000,000 pixels first (found by fuzzing).
const WHOLE_RESIZE_MAX: u64 = 16;

fn resizer_options() -> ResizeOptions {
    ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
}

/// Resizes `img` to `rw × rh` (or the `crop` window of it, in source coordinates).
fn resize(img: &RgbImage, rw: u32, rh: u32, crop: Option<[f64; 4]>) -> RgbImage {
    let (w, h) = img.dimensions();
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3)
        .expect("RgbImage buffer matches its size");
    let mut dst = Image::new(rw, rh, PixelType::U8x3);
    let mut opts = resizer_options();
    if let Some([left, top, width, height]) = crop {
        opts = opts.crop(left, top, width, height);
    }
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .expect("same pixel type on both sides");
    RgbImage::from_raw(rw, rh, dst.into_vec()).expect("resizer output matches its size")
}

/// Resizes and crops to `crop × crop`, exactly in torchvision's geometry.
pub fn resize_and_crop(img: &RgbImage, spec: &PreprocessSpec) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = u64::from(spec.resize_shorter);
    let long = |l: u32, short: u32| {
        let x = s as f64 * f64::from(l) / f64::from(short);
        (if spec.round_long_side {
            x.round()
        } else {
            x.floor()
        }) as u64
    };
    let (rw, rh) = if w <= h {
        (s, long(h, w))
    } else {
        (long(w, h), s)
    };
    let c = u64::from(spec.crop).min(rw).min(rh);
    // torchvision: int(round((h - crop) / 2)), and Python rounds half to even.
    let top = ((rh - c) as f64 / 2.0).round_ties_even() as u64;
    let left = ((rw - c) as f64 / 2.0).round_ties_even() as u64;
    let c32 = c as u32;
    if (rw, rh) == (u64::from(w), u64::from(h)) {
        return image::imageops::crop_imm(img, left as u32, top as u32, c32, c32).to_image();
    }
    if rw * rh <= WHOLE_RESIZE_MAX * s * s {
        let resized = resize(img, rw as u32, rh as u32, None);
        return image::imageops::crop_imm(&resized, left as u32, top as u32, c32, c32).to_image();
    }
    // The window of the source that lands in the crop, at the same scale.
    let (sx, sy) = (f64::from(w) / rw as f64, f64::from(h) / rh as f64);
    let window = [
        left as f64 * sx,
        top as f64 * sy,
        c as f64 * sx,
        c as f64 * sy,
    ];
    resize(img, c32, c32, Some(window))
}

/// Full preprocessing of one image into CHW f32 (length `spec.numel()`).
pub fn preprocess(img: &RgbImage, spec: &PreprocessSpec) -> Vec<f32> {
    let cropped = resize_and_crop(img, spec);
    let n = (spec.crop as usize).pow(2);
    let mut out = vec![0f32; 3 * n];
    for (i, p) in cropped.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(p[c]) - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

/// Preprocesses a batch in parallel; the output is `[B, 3, crop, crop]` flattened.
pub fn preprocess_batch(imgs: &[RgbImage], spec: &PreprocessSpec) -> Vec<f32> {
    let per: Vec<Vec<f32>> = imgs.par_iter().map(|im| preprocess(im, spec)).collect();
    per.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_torchvision() {
        let spec = PreprocessSpec::efficientnet_lite();
        let img = RgbImage::from_pixel(300, 600, image::Rgb([10, 20, 30]));
        let out = resize_and_crop(&img, &spec);
        assert_eq!(out.dimensions(), (224, 224));
        // A flat image stays flat through a normalised filter.
        assert!(out.pixels().all(|p| p.0 == [10, 20, 30]));
        let x = preprocess(&img, &spec);
        assert_eq!(x.len(), spec.numel());
        assert_eq!(x[0], (10.0 - 127.0) / 128.0);
        assert_eq!(x[224 * 224], (20.0 - 127.0) / 128.0);
    }

    #[test]
    fn thin_images_resize_only_the_cropped_window_with_the_same_result() {
        let spec = PreprocessSpec::efficientnet_lite();
        // 20:1, past the whole-resize limit: compare with resizing it whole.
        let img = RgbImage::from_fn(30, 600, |x, y| {
            image::Rgb([(x * 8) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        let windowed = resize_and_crop(&img, &spec);
        let (rw, rh) = (256, 5120);
        let whole = resize(&img, rw, rh, None);
        let whole = image::imageops::crop_imm(&whole, 16, (5120 - 224) / 2, 224, 224).to_image();
        assert_eq!(windowed.dimensions(), (224, 224));
        let worst = windowed
            .as_raw()
            .iter()
            .zip(whole.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "differs by {worst} grey levels");
        // A 1-pixel-wide strip of 4 million pixels is quick and small.
        let strip = RgbImage::from_pixel(1, 4_000_000, image::Rgb([7, 8, 9]));
        let out = resize_and_crop(&strip, &spec);
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [7, 8, 9]));
    }

    /// Inputs the fuzzer found to take seconds or gigabytes before the fix: each now
    /// preprocesses into a normal model input.
    #[test]
    fn fuzz_regressions_preprocess_normally() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/regressions");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let img = crate::decode::decode(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for spec in [
                PreprocessSpec::efficientnet_lite(),
                PreprocessSpec::imagenet(224, 0.875),
            ] {
                let x = preprocess(&img, &spec);
                assert_eq!(x.len(), spec.numel(), "{}", path.display());
                assert!(x.iter().all(|v| v.is_finite()));
            }
            seen += 1;
        }
        assert!(seen >= 4, "{seen} regression inputs");
    }

    #[test]
    fn imagenet_spec_matches_timm_convnext() {
        let spec = PreprocessSpec::imagenet(224, 0.875);
        assert_eq!((spec.resize_shorter, spec.crop), (256, 224));
    }

    /// The golden input (coffee.png through the reference pipeline) is reproduced to
    /// within a couple of grey levels; PIL's fixed-point bicubic differs by rounding only.
    #[test]
    fn coffee_matches_reference_preprocessing() {
        let shared = kadr_testkit::shared_dir();
        let bytes =
            std::fs::read(shared.join("golden/coffee.png")).expect("shared/golden/coffee.png");
        let rgb = crate::decode::decode(&bytes).unwrap();
        let x = preprocess(&rgb, &PreprocessSpec::efficientnet_lite());
        let golden: serde_json::Value = serde_json::from_slice(
            &std::fs::read(shared.join("golden/efficientnet_lite0_golden.json")).unwrap(),
        )
        .unwrap();
        let g = &golden["images"]["coffee.png"];
        let first8: Vec<f32> = g["input_first8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (a, b) in x.iter().zip(&first8) {
            assert!((a - b).abs() <= 2.0 / 128.0 + 1e-6, "{a} vs {b}");
        }
        let sum: f32 = x.iter().sum();
        let gsum = g["input_sum"].as_f64().unwrap() as f32;
        // Mean absolute deviation per value under 0.5 grey level.
        assert!(
            (sum - gsum).abs() / (x.len() as f32) < 0.5 / 128.0,
            "sum {sum} vs {gsum}"
        );
    }
}
