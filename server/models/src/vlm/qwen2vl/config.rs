//! The model's configuration, parsed from the hub `config.json` (the flat Qwen2-VL form, or
//! the newer form that nests the text fields under `text_config`).

use candle_core::{Result, Tensor};
use candle_nn::Activation;
use serde::Deserialize;

/// Activation of the vision MLP. HF's vision config defaults to `quick_gelu`, which candle's
/// `Activation` does not have, hence this small enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VisionAct {
    #[default]
    QuickGelu,
    Gelu,
    GeluPytorchTanh,
    Silu,
}

impl VisionAct {
    pub(crate) fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            // x * sigmoid(1.702 x), as transformers' QuickGELUActivation.
            Self::QuickGelu => xs.mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluPytorchTanh => xs.gelu(),
            Self::Silu => xs.silu(),
        }
    }
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_patch_size() -> usize {
    14
}
fn default_two() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    /// Width of the merger output, i.e. the text model's hidden size.
    pub hidden_size: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_two")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_two")]
    pub temporal_patch_size: usize,
    // Hub configs spell it `in_chans`, newer transformers `in_channels`; some carry both, so
    // they are two fields rather than a serde alias (which would reject the duplicate).
    #[serde(default)]
    in_chans: Option<usize>,
    #[serde(default)]
    in_channels: Option<usize>,
    #[serde(default)]
    pub hidden_act: VisionAct,
}

impl VisionConfig {
    pub fn in_channels(&self) -> usize {
        self.in_chans.or(self.in_channels).unwrap_or(3)
    }

    /// Length of one flattened patch row: `C * T * P * P` (1176 for Qwen2-VL).
    pub fn patch_dim(&self) -> usize {
        self.in_channels() * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// Split of the rotary half-dimension between the temporal, height and width position axes.
    pub mrope_section: Vec<usize>,
}

/// `eos_token_id` is a single id in some configs and a list in others.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

fn default_silu() -> Activation {
    Activation::Silu
}
fn default_image_token_id() -> u32 {
    151655
}
fn default_video_token_id() -> u32 {
    151656
}
fn default_vision_start_token_id() -> u32 {
    151652
}
fn default_vision_end_token_id() -> u32 {
    151653
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default = "default_silu")]
    pub hidden_act: Activation,
    /// Informational: the loader ties `lm_head` to `embed_tokens` whenever the checkpoint has no
    /// `lm_head.weight`, which is what this flag means for the 2B model.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub rope_scaling: RopeScaling,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_image_token_id")]
    pub image_token_id: u32,
    #[serde(default = "default_video_token_id")]
    pub video_token_id: u32,
    #[serde(default = "default_vision_start_token_id")]
    pub vision_start_token_id: u32,
    #[serde(default = "default_vision_end_token_id")]
    pub vision_end_token_id: u32,
    pub vision_config: VisionConfig,
}

impl Config {
    /// Parses a hub `config.json`. Newer transformers versions write the text fields under
    /// `text_config`; they are hoisted to the top level (top-level keys win) so both forms parse.
    pub fn from_json_value(
        mut v: serde_json::Value,
    ) -> std::result::Result<Self, serde_json::Error> {
        if let Some(obj) = v.as_object_mut() {
            if let Some(serde_json::Value::Object(text)) = obj.remove("text_config") {
                for (k, val) in text {
                    obj.entry(k).or_insert(val);
                }
            }
        }
        serde_json::from_value(v)
    }

    pub fn from_json_str(s: &str) -> std::result::Result<Self, serde_json::Error> {
        Self::from_json_value(serde_json::from_str(s)?)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default()
    }

    /// Number of language-model tokens an image with this `grid_thw` expands to.
    pub fn image_tokens(&self, grid_thw: [usize; 3]) -> usize {
        let m = self.vision_config.spatial_merge_size;
        grid_thw[0] * grid_thw[1] * grid_thw[2] / (m * m)
    }
}
