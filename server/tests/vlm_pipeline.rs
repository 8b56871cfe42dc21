//! End-to-end test of `Qwen2Vl::load` + `caption` + `zero_shot` on the tiny golden weights with
//! a small word-level tokenizer whose special tokens sit at the tiny config's ids.

use candle_core::{DType, Device};
use image::RgbImage;
use kadr_models::vlm::processor::Qwen2Vl;
use kadr_models::vlm::qwen2vl::LabelScore;
use std::path::PathBuf;

/// A model folder in hub layout built from the golden file (see the test kit).
fn model_dir() -> PathBuf {
    common::tiny_qwen2vl_dir()
}

fn image(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + seed) % 256) as u8,
            ((y * 5 + seed * 3) % 256) as u8,
            ((x + y + seed) % 256) as u8,
        ])
    })
}

#[test]
fn load_caption_zero_shot() {
    let dir = model_dir();
    let mut vl = Qwen2Vl::load(&dir, &Device::Cpu, DType::F32).unwrap();

    // Prompt layout: chat template with the image pads expanded (60x50 -> 56x56 -> 4 tokens).
    let img = image(1, 60, 50);
    let p = vl.prompt(&img, "What is in this image?").unwrap();
    let ids = &p.input_ids;
    assert_eq!(ids[0], 247);
    let vs = ids.iter().position(|&t| t == 252).unwrap();
    assert_eq!(&ids[vs + 1..vs + 6], &[250, 250, 250, 250, 253]);
    assert_eq!(ids.iter().filter(|&&t| t == 250).count(), 4);
    assert_eq!(&ids[ids.len() - 3..], &[248, 247, 10 + 5]); // <|im_end|> <|im_start|> assistant

    // Captions in one batch of different image sizes equal captions made one by one.
    let imgs = vec![image(1, 60, 50), image(2, 120, 90), image(3, 448, 448)];
    let batched = vl.caption(&imgs, 6).unwrap();
    vl.max_batch = 1;
    let single = vl.caption(&imgs, 6).unwrap();
    println!("captions: {batched:?}");
    assert_eq!(batched, single);
    assert_eq!(batched.len(), 3);

    // Zero-shot: probabilities over labels, from the model's scores.
    let labels: Vec<String> = ["cat", "dog", "red car"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let res = vl.zero_shot(&img, &labels).unwrap();
    println!("zero-shot: {res:?}");
    assert_eq!(res.len(), 3);
    assert_eq!(res[2].0, "red car");
    let total: f32 = res.iter().map(|r| r.1).sum();
    assert!((total - 1.0).abs() < 1e-5);
    let label_ids = vec![vec![30, 248], vec![31, 248], vec![32, 33, 248]];
    let direct = vl
        .model
        .classify(&p_zero_shot(&vl, &img), &label_ids, LabelScore::Sum, 8)
        .unwrap();
    for (r, d) in res.iter().zip(direct) {
        assert!((r.1 - d).abs() < 1e-6);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Images HF's processor would refuse (an aspect ratio over 200) or scale up (sides under 28 px)
/// get captions and zero-shot labels like any other, in one batch with a normal one.
#[test]
fn tiny_and_elongated_images_get_captions() {
    let dir = model_dir();
    let mut vl = Qwen2Vl::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let imgs = vec![
        image(1, 300, 1),
        image(2, 1, 1),
        image(3, 2, 900),
        image(4, 60, 50),
    ];
    let captions = vl.caption(&imgs, 3).unwrap();
    assert_eq!(captions.len(), 4);
    let labels: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
    for img in &imgs {
        let res = vl.zero_shot(img, &labels).unwrap();
        let total: f32 = res.iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-5, "{:?}", img.dimensions());
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn p_zero_shot(vl: &Qwen2Vl, img: &RgbImage) -> kadr_models::vlm::qwen2vl::Prompt {
    vl.prompt(img, &vl.zero_shot_prompt).unwrap()
}

mod common;

/// The server with a VLM: an uploaded image gets a caption and zero-shot labels over the
/// dataset's categories, marked as coming from the VLM (the tiny model, so the words are noise,
/// but every step of the real path runs).
#[test]
fn the_server_captions_and_labels_uploads_with_the_vlm() {
    use app::backend::Backend;
    use app::types::TextSource;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["cat", "dog", "car"], 3);
    let weights = common::tiny_convnext(tmp.path());
    let embedder =
        kadr_engine::embed::Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let home = tmp.path().join("home");
    let vlm = Qwen2Vl::load(&model_dir(), &Device::Cpu, DType::F32).unwrap();
    let vlm = std::sync::Arc::new(kadr_engine::vlm::Vlm::new(vlm, 4));
    let ws = kadr_engine::workspace::Workspace::open_with_vlm(
        &home,
        embedder,
        None,
        Some(vlm.clone()),
        kadr_engine::index::IndexConfig::faiss(kadr_engine::index::IndexKind::Flat),
    )
    .unwrap();
    kadr_engine::jobs::index_folder(&ws, &data, 4, &|_, _| {}).unwrap();
    // Every indexed image was captioned, once per content.
    assert_eq!(vlm.captions_made(), 9);
    let mut settings = kadr_engine::settings::Settings::from_env().unwrap();
    settings.home = home;
    let backend = kadr::backend::EngineBackend::new(ws, &settings, vec![data.clone()]).unwrap();
    assert!(backend.defaults().vlm);

    let query = tmp.path().join("q.png");
    common::synthetic_png(&query, 1, 99);
    let outcome = backend
        .analyse_files(vec![("q.png".into(), Ok(std::fs::read(&query).unwrap()))])
        .remove(0);
    let analysis = outcome
        .analysis
        .unwrap_or_else(|| panic!("{:?}", outcome.error));
    assert_eq!(analysis.text.source, TextSource::Vlm);
    let caption = analysis.text.caption.as_deref().unwrap();
    assert!(!caption.trim().is_empty(), "empty caption");
    let mut labels: Vec<&str> = analysis
        .text
        .labels
        .iter()
        .map(|l| l.label.as_str())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, ["car", "cat", "dog"]);
    let total: f32 = analysis.text.labels.iter().map(|l| l.score).sum();
    assert!(
        (total - 1.0).abs() < 1e-4,
        "zero-shot scores sum to {total}"
    );
    assert!(analysis.timings.text_ms > 0.0);
}
