//! MiniLM (sentence-transformers BERT): sentences → L2-normalised sentence embeddings with a sentence-transformers BERT model
//! (all-MiniLM-L6-v2 by default, 384-d) on candle. The pipeline is sentence-transformers' own:
//! the folder's `tokenizer.json` with `max_seq_length` from `sentence_bert_config.json` (it
//! overrides the tokenizer's 128), BERT, mean pooling over the attention mask, L2 normalisation.
//! Finding the folder (settings, hub) is the engine's `text`; what text an image has, and how
//! it joins the visual embedding, is its `fusion`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The files a sentence-transformers folder must hold, and the optional ones read if present.
pub const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
pub const OPTIONAL: [&str; 2] = ["sentence_bert_config.json", "1_Pooling/config.json"];

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default = "yes")]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn yes() -> bool {
    true
}

/// A loaded sentence embedder on a device.
pub struct TextEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    /// `<name>@<first 12 hex of the weights' blake3>`.
    model_id: String,
    max_batch: usize,
}

impl TextEmbedder {
    /// Loads a sentence-transformers BERT folder (`config.json`, `tokenizer.json`,
    /// `model.safetensors` with or without the `bert.` prefix, optional pooling and
    /// `sentence_bert_config.json`).
    pub fn load(dir: &Path, name: &str, device: Device, max_batch: usize) -> Result<Self> {
        let read_json = |file: &str| -> Result<Option<String>> {
            let p = dir.join(file);
            if !p.is_file() {
                return Ok(None);
            }
            Ok(Some(
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
            ))
        };
        let config: Config = serde_json::from_str(
            &read_json("config.json")?
                .with_context(|| format!("{}: no config.json", dir.display()))?,
        )
        .with_context(|| format!("{}/config.json is not a BERT config", dir.display()))?;
        let pooling: PoolingConfig = match read_json("1_Pooling/config.json")? {
            Some(s) => serde_json::from_str(&s).context("reading 1_Pooling/config.json")?,
            None => PoolingConfig::default(),
        };
        if !pooling.pooling_mode_mean_tokens
            || pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
        {
            bail!(
                "{}: only mean pooling is supported (see 1_Pooling/config.json)",
                dir.display()
            );
        }
        let max_seq = match read_json("sentence_bert_config.json")? {
            Some(s) => {
                serde_json::from_str::<SentenceBertConfig>(&s)
                    .context("reading sentence_bert_config.json")?
                    .max_seq_length
            }
            None => None,
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("reading {}/tokenizer.json", dir.display()))?;
        // The folder's tokenizer pads every input to a fixed 128 and truncates there; the
        // sentence-transformers pipeline pads to the longest in the batch and truncates at
        // max_seq_length.
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        let truncation = TruncationParams {
            max_length: max_seq,
            ..tokenizer.get_truncation().cloned().unwrap_or_default()
        };
        tokenizer
            .with_padding(Some(padding))
            .with_truncation(Some(truncation))
            .map_err(anyhow::Error::msg)?;

        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights)
            .with_context(|| format!("reading weights {}", weights.display()))?;
        let hash = blake3::hash(&bytes).to_hex();
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .with_context(|| format!("{} is not a safetensors file", weights.display()))?;
        // Hub sentence-transformers checkpoints name tensors without `bert.`; BertModel (and
        // full BERT checkpoints) use it.
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let model = BertModel::load(vb, &config)
            .with_context(|| format!("{} does not hold BERT weights", weights.display()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            model_id: format!("{name}@{}", &hash[..12]),
            max_batch: max_batch.max(1),
        })
    }

    /// Identity of model + weights, stored with every text embedding.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds texts, L2-normalised, `max_batch` at a time (similar lengths batched together).
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        // Sorting by length keeps padding small; the results go back in input order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].as_ref().len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.max_batch) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_ref()).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(anyhow::Error::msg)
            .context("tokenizing")?;
        let (b, len) = (enc.len(), enc.first().map_or(0, |e| e.len()));
        let flat = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            enc.iter().flat_map(|e| f(e).iter().copied()).collect()
        };
        let ids = Tensor::from_vec(flat(|e| e.get_ids()), (b, len), &self.device)?;
        let types = Tensor::from_vec(flat(|e| e.get_type_ids()), (b, len), &self.device)?;
        let mask = Tensor::from_vec(flat(|e| e.get_attention_mask()), (b, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens: padding is masked out of the sum and the count.
        let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&count)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        Ok(mean
            .broadcast_div(&norm)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }
}
