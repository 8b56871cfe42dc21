//! Qwen2-VL's real tokenizer files (`../shared/qwen2vl-2b-instruct`: `vocab.json`, `merges.txt`,
//! the added tokens, and no `tokenizer.json`), built by `vlm::tokenizer`, give exactly the ids
//! and decoded texts HF `transformers` gives from the same files:
//! `tests/data/qwen2vl_tokenizer_reference.json`, made by
//! `scripts/golden/qwen2vl_tokenizer_reference.py` (transformers 4.57.1, tokenizers 0.22.1).

use kadr_models::vlm::processor::{
    chat_prompt, Qwen2VlTokenizer, CAPTION_PROMPT, ZERO_SHOT_PROMPT,
};
use kadr_models::vlm::qwen2vl::{Config, ImageInput};
use kadr_models::vlm::tokenizer;
use kadr_testkit as common;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn real_dir() -> PathBuf {
    common::shared_dir().join("qwen2vl-2b-instruct")
}

fn reference() -> Value {
    serde_json::from_str(include_str!("data/qwen2vl_tokenizer_reference.json")).unwrap()
}

fn real_config() -> Config {
    Config::from_json_str(&std::fs::read_to_string(real_dir().join("config.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

/// Every string of the reference (category names and tricky text) and both chat prompts.
fn assert_same_ids_as_hf(tok: &tokenizers::Tokenizer) -> usize {
    let r = reference();
    let mut n = 0;
    let entries = r["strings"].as_array().unwrap().iter();
    for e in entries.chain(r["prompts"].as_array().unwrap()) {
        let text = e["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got.get_ids(), ids(&e["ids"]), "ids of {text:?}");
        let d = tok.decode(got.get_ids(), false).unwrap();
        assert_eq!(d, e["decoded"].as_str().unwrap(), "decoding {text:?}");
        let d = tok.decode(got.get_ids(), true).unwrap();
        assert_eq!(
            d,
            e["decoded_skip_special"].as_str().unwrap(),
            "decoding {text:?} without special tokens"
        );
        n += 1;
    }
    n
}

#[test]
fn the_tokenizer_built_from_vocab_and_merges_gives_hf_ids() {
    let dir = real_dir();
    assert!(!dir.join("tokenizer.json").exists());
    let tok = tokenizer::load(&dir).unwrap();
    let r = reference();
    assert_eq!(
        tok.get_vocab_size(true) as u64,
        r["vocab_size"].as_u64().unwrap()
    );
    let n = assert_same_ids_as_hf(&tok);
    println!("ids and decoded texts equal HF's for {n} strings");
    assert!(n >= 38, "{n}");
}

/// The backend HF builds (normaliser, pre-tokenizer, decoder, model options, added tokens) and
/// the one built here serialise to the same JSON, vocabulary and merges aside.
#[test]
fn the_pipeline_is_the_one_hf_builds() {
    let tok = tokenizer::load(&real_dir()).unwrap();
    let mut ours = serde_json::to_value(&tok).unwrap();
    let mut hf = reference()["pipeline"].clone();
    for v in [&mut ours, &mut hf] {
        let model = v["model"].as_object_mut().unwrap();
        model.remove("vocab");
        model.remove("merges");
    }
    for key in [
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
        "added_tokens",
    ] {
        assert_eq!(ours[key], hf[key], "{key}");
    }
}

/// The prompts the port builds are the folder's own chat template rendered by HF, and with the
/// image pads expanded they are the ids HF's processor makes.
#[test]
fn the_chat_prompts_are_hf_template_and_ids() {
    let cfg = real_config();
    let tok = Qwen2VlTokenizer::from_dir(&real_dir(), &cfg).unwrap();
    let r = reference();
    let prompts = r["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    for (p, user) in prompts.iter().zip([CAPTION_PROMPT, ZERO_SHOT_PROMPT]) {
        assert_eq!(
            p["user_text"], user,
            "the reference script's prompt is the port's"
        );
        assert_eq!(chat_prompt(user, 1), p["text"].as_str().unwrap());
        assert_eq!(tok.encode(&chat_prompt(user, 1)).unwrap(), ids(&p["ids"]));
        let g = ids(&p["grid_thw"]);
        let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
        let n = grid.iter().product::<usize>();
        let image = ImageInput {
            pixel_values: candle_core::Tensor::zeros(
                (n, 1176),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap(),
            grid_thw: grid,
        };
        let got = tok.prompt_ids(user, &[image], &cfg).unwrap();
        assert_eq!(got, ids(&p["expanded_ids"]), "{user}");
    }
}

/// HF pads with the tokenizer's pad token, `<|endoftext|>`; answers end at `<|im_end|>` or
/// `<|endoftext|>`.
#[test]
fn pad_and_end_ids_are_hf_ones() {
    let cfg = real_config();
    let tok = Qwen2VlTokenizer::from_dir(&real_dir(), &cfg).unwrap();
    let r = reference();
    assert_eq!(tok.pad_id as u64, r["pad_token_id"].as_u64().unwrap());
    assert_eq!(tok.pad_id, 151643);
    assert_eq!(tok.im_end_id as u64, r["eos_token_id"].as_u64().unwrap());
    assert!(r["bos_token_id"].is_null(), "no BOS is added");
    let mut eos = tok.eos_ids.clone();
    eos.sort_unstable();
    assert_eq!(eos, [151643, 151645]);
    assert_eq!(tok.image_pad_id, cfg.image_token_id);
}

/// The reference covers every category name of both datasets kadr builds.
#[test]
fn the_reference_covers_the_dataset_categories() {
    let r = reference();
    let root = common::repo_root();
    let manifest =
        std::fs::read_to_string(root.join("server/engine/assets/tuxpaint_8cat_manifest.tsv"))
            .unwrap();
    let mut tux: Vec<&str> = manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').next().unwrap().rsplit('/').next().unwrap())
        .collect();
    tux.sort_unstable();
    tux.dedup();
    let listed: Vec<&str> = r["categories"]["tuxpaint8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(tux, listed);
    let dataset_rs = std::fs::read_to_string(root.join("server/engine/src/dataset.rs")).unwrap();
    let fashion = r["categories"]["fashion_mnist"].as_array().unwrap();
    assert_eq!(fashion.len(), 10);
    let strings: Vec<&str> = r["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let fashion: Vec<&str> = fashion.iter().map(|v| v.as_str().unwrap()).collect();
    for name in listed.iter().chain(&fashion) {
        assert!(
            strings.contains(name),
            "{name} is not tokenized in the reference"
        );
    }
    for f in &fashion {
        assert!(
            dataset_rs.contains(&format!("\"{f}\"")),
            "{f} is no Fashion-MNIST class"
        );
    }
}

fn link_files(dir: &Path, files: &[&str]) {
    for f in files {
        std::os::unix::fs::symlink(real_dir().join(f), dir.join(f)).unwrap();
    }
}

/// Files older than `added_tokens_decoder` (only `added_tokens.json` + `special_tokens_map.json`)
/// give the same tokenizer: HF's legacy rule makes the named tokens special.
#[test]
fn legacy_added_tokens_json_gives_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    link_files(
        tmp.path(),
        &[
            "vocab.json",
            "merges.txt",
            "added_tokens.json",
            "special_tokens_map.json",
        ],
    );
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(real_dir().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("added_tokens_decoder");
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = tokenizer::load(tmp.path()).unwrap();
    assert_same_ids_as_hf(&tok);
}

/// With a `tokenizer.json` in the folder, that file is the tokenizer, whatever else is there.
#[test]
fn tokenizer_json_wins_over_vocab_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    link_files(
        tmp.path(),
        &["vocab.json", "merges.txt", "tokenizer_config.json"],
    );
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "cat": 1}, "unk_token": "[UNK]"}
    });
    std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).unwrap();
    let tok = tokenizer::load(tmp.path()).unwrap();
    assert_eq!(tok.get_vocab_size(true), 2);
    assert_eq!(tok.encode("cat dog", false).unwrap().get_ids(), [1, 0]);
}

/// A folder with neither names what it needs.
#[test]
fn a_folder_without_tokenizer_files_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    link_files(tmp.path(), &["vocab.json"]);
    let err = tokenizer::check_files(tmp.path()).unwrap_err();
    assert!(
        err.contains("tokenizer.json") && err.contains("merges.txt"),
        "{err}"
    );
    let err = format!("{:#}", tokenizer::load(tmp.path()).unwrap_err());
    assert!(err.contains("merges.txt"), "{err}");
}
