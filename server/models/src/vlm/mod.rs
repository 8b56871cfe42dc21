//! The vision-language model (optional): Qwen2-VL on candle for captions and zero-shot labels
//! over the dataset's categories. [`qwen2vl`] is the network (vision tower, M-RoPE decoder, KV
//! cache, batched generation, continuation scoring); [`processor`] is its input side (image
//! processor, chat template, tokenizer) and the [`processor::Qwen2Vl`] pipeline the server calls.

pub mod processor;
pub mod qwen2vl;
pub mod tokenizer;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// The hub model the VLM setting names by default.
pub const DEFAULT_VLM: &str = "Qwen/Qwen2-VL-2B-Instruct";

/// Loads the VLM: from the folder `local` when given (`VLM_PATH`: `config.json`,
/// `tokenizer.json` or `vocab.json` + `merges.txt` + `tokenizer_config.json`,
/// `preprocessor_config.json` if any, safetensors), otherwise the hub repository `repo` (downloaded once into the
/// Hugging Face cache, with progress bars). bf16 on CUDA, f32 on CPU.
pub fn load(repo: &str, local: Option<&Path>, device: &Device) -> Result<processor::Qwen2Vl> {
    let dir = match local {
        Some(dir) => dir.to_path_buf(),
        None => download(repo)?,
    };
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let started = std::time::Instant::now();
    let vlm = processor::Qwen2Vl::load(&dir, device, dtype)
        .with_context(|| format!("loading the VLM from {}", dir.display()))?;
    tracing::info!(
        "VLM {} loaded in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f32()
    );
    Ok(vlm)
}

/// The snapshot folder of `repo` with its config, tokenizer and every weight shard.
fn download(repo: &str) -> Result<PathBuf> {
    let fetch = || -> Result<PathBuf> {
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_progress(true)
            .build()?
            .model(repo.to_string());
        let config = api.get("config.json")?;
        // The hub repository has tokenizer.json; copies that carry only the slow tokenizer's
        // files are built from them (see `tokenizer`).
        if api.get("tokenizer.json").is_err() {
            for f in tokenizer::SLOW_FILES {
                api.get(f)?;
            }
            for f in [
                "tokenizer_config.json",
                "added_tokens.json",
                "special_tokens_map.json",
            ] {
                api.get(f).ok();
            }
        }
        api.get("preprocessor_config.json").ok();
        match api.get("model.safetensors.index.json") {
            Ok(index) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
                let mut shards: Vec<&str> = v["weight_map"]
                    .as_object()
                    .context("index without weight_map")?
                    .values()
                    .filter_map(|f| f.as_str())
                    .collect();
                shards.sort_unstable();
                shards.dedup();
                for shard in shards {
                    api.get(shard)?;
                }
            }
            Err(_) => {
                api.get("model.safetensors")?;
            }
        }
        Ok(config.parent().context("snapshot folder")?.to_path_buf())
    };
    match fetch() {
        Ok(dir) => Ok(dir),
        Err(e) => bail!(
            "no weights for the VLM {repo}: VLM_PATH is not set and the hub is unreachable ({e:#}).\n\
             Put the model's config.json, tokenizer.json (or vocab.json, merges.txt and \
             tokenizer_config.json), preprocessor_config.json and *.safetensors in a folder and set \
             VLM_PATH to it, or unset VLM to run without captions (the text analysis then shows \
             the backbone's ImageNet labels)."
        ),
    }
}
