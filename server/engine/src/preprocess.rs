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

    /// The golden inputs (coffee.png and chelsea.png through the reference pipeline: PIL
    /// bicubic, centre crop, (x − 127) / 128, CHW) are reproduced value by value over the whole
    /// tensor. PIL's bicubic is fixed-point and clamps to 8 bits between its two passes, so
    /// values differ by a grey level here and there (about a fifth on average), and by more at
    /// a few sharp edges (coffee.png: 73 of 150,528 values more than one level off, at most 6;
    /// chelsea.png: none). The bounds are those, with a little room; a wrong channel order,
    /// crop offset, resize filter or normalisation moves far more values than that.
    #[test]
    fn photos_match_reference_preprocessing_everywhere() {
        let shared = kadr_testkit::shared_dir();
        let golden = candle_core::safetensors::load(
            shared.join("golden/effnet_lite0_check.safetensors"),
            &candle_core::Device::Cpu,
        )
        .expect("shared/golden/effnet_lite0_check.safetensors");
        let input = &golden["input"];
        assert_eq!(input.dims(), [2, 3, 224, 224]);
        let spec = PreprocessSpec::efficientnet_lite();
        let grey = 1.0 / 128.0;
        for (i, name) in ["coffee.png", "chelsea.png"].iter().enumerate() {
            let want: Vec<f32> = input
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let bytes = std::fs::read(shared.join("golden").join(name)).unwrap();
            let x = preprocess(&crate::decode::decode(&bytes).unwrap(), &spec);
            assert_eq!(x.len(), want.len(), "{name}");
            let levels: Vec<f32> = x
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / grey)
                .collect();
            let max = levels.iter().copied().fold(0.0, f32::max);
            let mean = levels.iter().sum::<f32>() / levels.len() as f32;
            let far = levels.iter().filter(|&&d| d > 1.5).count();
            println!(
                "{name}: mean {mean:.3} grey levels, max {max:.1}, {far} of {} values more than one off",
                levels.len()
            );
            assert!(mean < 0.25, "{name}: mean difference {mean:.3} grey levels");
            assert!(max <= 8.0, "{name}: a value {max:.1} grey levels off");
            assert!(
                far <= 150,
                "{name}: {far} values more than one grey level off"
            );
        }
    }
}
