//! Helpers for the integration tests and examples of kadr's crates: where the shared folder
//! and the real models are, a tiny real-architecture ConvNeXt, and synthetic image folders.
//! Test code only; nothing here is linked into the `kadr` binary.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The read-only shared folder (goldens, manifests, bundled weights): `KADR_SHARED`, or
/// `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("KADR_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| repo_root().join("../shared"))
}

/// The tiny timm ConvNeXt of the golden test, saved without the `weights.` prefix as a
/// stand-alone checkpoint, like a real hub file.
pub fn tiny_convnext(dir: &Path) -> PathBuf {
    let golden = shared_dir().join("golden/convnext_linear_mlp.safetensors");
    let all = candle_core::safetensors::load(&golden, &Device::Cpu).expect("shared golden file");
    let weights: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("weights.").map(|k| (k.to_string(), v)))
        .collect();
    let out = dir.join("convnext_tiny_test.safetensors");
    candle_core::safetensors::save(&weights, &out).unwrap();
    out
}

/// The real EfficientNet-Lite0 weights: `KADR_WEIGHTS`, or where setup.sh converts them.
pub fn effnet_weights() -> PathBuf {
    let p = std::env::var_os("KADR_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/tf_efficientnet_lite0/model.safetensors"));
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// The real all-MiniLM-L6-v2 folder: `KADR_TEXT_MODEL`, or where setup.sh unpacks it.
pub fn minilm_dir() -> PathBuf {
    let p = std::env::var_os("KADR_TEXT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-minilm-l6-v2"));
    assert!(
        p.join("model.safetensors").is_file() && p.join("tokenizer.json").is_file(),
        "{} has no all-MiniLM-L6-v2: run scripts/setup.sh",
        p.display()
    );
    p
}

/// A deterministic image: a colour per category with a pattern per index.
pub fn synthetic_png(path: &Path, category: usize, i: usize) {
    let base = [
        [200u8, 30, 30],
        [30, 200, 30],
        [30, 30, 200],
        [200, 200, 30],
    ][category % 4];
    let img = image::RgbImage::from_fn(64 + i as u32 * 3, 48, |x, y| {
        let t = ((x * (i as u32 + 1) + y * 7) % 32) as u8;
        image::Rgb([
            base[0].saturating_add(t),
            base[1].saturating_add(t),
            base[2].saturating_sub(t),
        ])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `categories × per` synthetic images under `root/<cat>/`.
pub fn synthetic_dataset(root: &Path, categories: &[&str], per: usize) {
    for (c, name) in categories.iter().enumerate() {
        for i in 0..per {
            synthetic_png(&root.join(name).join(format!("{i}.png")), c, i);
        }
    }
}

/// A set for text search: `red/` and `green/` synthetic images (3 each) with the two real
/// photos of the golden set, `drinks/coffee.png` (an espresso) and `animals/chelsea.png` (a
/// tabby cat).
pub fn photos_among_synthetic(root: &Path) {
    synthetic_dataset(root, &["red", "green"], 3);
    let golden = shared_dir().join("golden");
    for (category, photo) in [("drinks", "coffee.png"), ("animals", "chelsea.png")] {
        std::fs::create_dir_all(root.join(category)).unwrap();
        std::fs::copy(golden.join(photo), root.join(category).join(photo)).unwrap();
    }
}

/// Largest absolute element-wise difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `n` pseudo-random unit vectors of `dim` (row-major), the same for the same seed: test data
/// for the vector indexes.
pub fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    for row in v.chunks_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// `jpeg` with an APP1 segment (`payload`, e.g. an EXIF block) inserted after SOI.
pub fn with_app1(jpeg: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An EXIF block saying "rotate 90° clockwise" (orientation 6), for [`with_app1`].
pub fn exif_orientation_6() -> Vec<u8> {
    let mut e = b"Exif\0\0MM\0*\0\0\0\x08".to_vec();
    e.extend_from_slice(&[0, 1]); // one entry
    e.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
    e.extend_from_slice(&[0, 0, 0, 0]);
    e
}

pub mod milvus;
