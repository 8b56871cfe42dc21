//! Helpers for the integration tests and examples of kadr's crates: where the shared folder
//! and the real models are, a tiny real-architecture ConvNeXt and Qwen2-VL, and synthetic
//! image folders.
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

/// The tiny tokenizer's words, from id 10.
const WORDS: &[&str] = &[
    "system",
    "You",
    "are",
    "a",
    "helpful",
    "assistant",
    ".",
    "user",
    "Describe",
    "this",
    "image",
    "in",
    "one",
    "sentence",
    "What",
    "is",
    "?",
    "Answer",
    "with",
    "category",
    "cat",
    "dog",
    "red",
    "car",
];

/// The tiny model's tokenizer.
fn tiny_qwen2vl_tokenizer() -> String {
    let specials = [
        (247, "<|im_start|>"),
        (248, "<|im_end|>"),
        (249, "<|endoftext|>"),
        (250, "<|image_pad|>"),
        (252, "<|vision_start|>"),
        (253, "<|vision_end|>"),
    ];
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(w.to_string(), (10 + i).into());
    }
    for (id, t) in specials {
        vocab.insert(t.into(), id.into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .map(|(id, t)| {
            serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// The tiny Qwen2-VL golden model as a folder in hub layout (config, safetensors, and a small
/// word-level `tokenizer.json` whose special tokens sit at the tiny config's ids), a new
/// folder under the temporary directory per call (tests run at once, and some remove theirs).
/// Its captions are noise, but every step of the real path runs.
pub fn tiny_qwen2vl_dir() -> PathBuf {
    let root = shared_dir();
    let golden = root.join("golden");
    // One folder per call: the tests run at once and some remove theirs.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qwen2vl-tiny-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = candle_core::safetensors::load(golden.join("qwen2vl_tiny.safetensors"), &Device::Cpu)
        .unwrap();
    let weights: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("weights.").map(|k| (k.to_string(), v)))
        .collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("qwen2vl_tiny.json")).unwrap())
            .unwrap();
    std::fs::write(
        dir.join("config.json"),
        json["config_json_like_hub"].to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), tiny_qwen2vl_tokenizer()).unwrap();
    dir
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
