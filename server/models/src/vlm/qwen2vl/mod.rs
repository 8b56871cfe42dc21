//! Qwen2-VL for candle: vision tower, Qwen2 text decoder with multimodal rotary embeddings
//! (M-RoPE), and a token-id level inference API.
//!
//! What lives here:
//! - [`Config`] / [`VisionConfig`]: parsed from the hub `config.json` (the flat Qwen2-VL form, or the
//!   newer form that nests the text fields under `text_config`).
//! - Vision tower (`visual.*`): the Conv3d patch embedding done as one matmul over the flattened
//!   `C*T*P*P` rows, blocks of LayerNorm + 2-D rotary attention + QuickGELU MLP where attention is
//!   confined to each image (HF's `cu_seqlens`), and the `PatchMerger` (2x2 patches -> one token).
//! - Text decoder (`model.*`): Qwen2 layers (GQA, RmsNorm, SwiGLU) with M-RoPE and a KV cache.
//! - [`Qwen2VlModel`]: logits for whole prompts, batched greedy / sampled generation (real batching:
//!   left padding + attention mask, one forward per step for the whole batch), and log-likelihood
//!   scoring of continuations (used for zero-shot labels).
//!
//! One file a part, as in candle-transformers' multi-file models: [`config`], [`vision`],
//! [`text`], [`rope`] and [`model`]. Tokenization, chat template and image preprocessing live
//! in `processor.rs`; these files depend only on candle. Videos are not supported (images only).
//!
//! Reference: transformers `models/qwen2_vl/modeling_qwen2_vl.py`.

pub mod config;
pub mod model;
pub mod rope;
pub mod text;
pub mod vision;

pub use config::*;
pub use model::*;
pub use rope::rope_index;
pub use vision::VisionModel;
