//! The model's configuration, parsed from a `config.json` of any layout transformers writes
//! (see [`Config::from_json_value`]), with HF's defaults for every field a file may omit.

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

// Defaults are those of transformers' `Qwen2VLVisionConfig` / `Qwen2VLTextConfig` /
// `Qwen2VLConfig` (the 7B shape: a file that names no size gets what HF would build), so a
// config re-saved without the fields that equal them parses to the same model.
fn default_depth() -> usize {
    32
}
fn default_embed_dim() -> usize {
    1280
}
fn default_vision_hidden_size() -> usize {
    3584
}
fn default_num_heads() -> usize {
    16
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

/// The vision tower's rotary parameters (`vision_config.rope_parameters` in transformers 5; older
/// files have none and HF uses theta 10000).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionRope {
    #[serde(default = "default_vision_rope_theta")]
    pub rope_theta: f64,
}

fn default_vision_rope_theta() -> f64 {
    10000.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    /// Width of the merger output, i.e. the text model's hidden size.
    #[serde(default = "default_vision_hidden_size")]
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
    #[serde(default)]
    rope_parameters: Option<VisionRope>,
}

impl Default for VisionConfig {
    /// HF's `Qwen2VLVisionConfig()`.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every vision field has a default")
    }
}

impl VisionConfig {
    pub fn in_channels(&self) -> usize {
        self.in_chans.or(self.in_channels).unwrap_or(3)
    }

    /// Base of the 2-D rotary embedding's frequencies.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map_or_else(default_vision_rope_theta, |r| r.rope_theta)
    }

    /// Length of one flattened patch row: `C * T * P * P` (1176 for Qwen2-VL).
    pub fn patch_dim(&self) -> usize {
        self.in_channels() * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// Split of the rotary half-dimension between the temporal, height and width position axes.
    #[serde(default = "default_mrope_section")]
    pub mrope_section: Vec<usize>,
}

impl Default for RopeScaling {
    fn default() -> Self {
        Self {
            mrope_section: default_mrope_section(),
        }
    }
}

/// transformers 5's fallback when the rope parameters name no sections (`modeling_qwen2_vl`);
/// transformers 4 has none and fails on such a file.
fn default_mrope_section() -> Vec<usize> {
    vec![16, 24, 24]
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
fn default_vocab_size() -> usize {
    152064
}
fn default_hidden_size() -> usize {
    8192
}
fn default_intermediate_size() -> usize {
    29568
}
fn default_num_hidden_layers() -> usize {
    80
}
fn default_num_attention_heads() -> usize {
    64
}
fn default_num_key_value_heads() -> usize {
    8
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_eos_token_id() -> Option<TokenIds> {
    Some(TokenIds::One(151645))
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
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// `null` means as many as `num_attention_heads` (see [`Config::from_json_value`]).
    #[serde(default = "default_num_key_value_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Read from `rope_theta` or from the rope parameters (see [`Config::from_json_value`]).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_silu")]
    pub hidden_act: Activation,
    /// Informational: the loader ties `lm_head` to `embed_tokens` whenever the checkpoint has no
    /// `lm_head.weight`, which is what this flag means for the 2B model.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The M-RoPE sections, from `rope_scaling` or `rope_parameters`.
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    #[serde(default = "default_eos_token_id")]
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
    #[serde(default)]
    pub vision_config: VisionConfig,
}

impl Config {
    /// Parses a `config.json` in any of the layouts transformers writes:
    /// - the hub's flat one (text fields at the top, `rope_theta`, `rope_scaling.mrope_section`);
    /// - transformers 4.5x re-saves: the same plus a `text_config` copy of the text fields;
    /// - transformers 5: text fields only under `text_config`, with `rope_theta` and
    ///   `mrope_section` inside `rope_parameters`, `tie_word_embeddings` at the top.
    ///
    /// As in HF, `text_config` wins over top-level keys when both exist; the rope parameters are
    /// `rope_scaling`, else `rope_parameters`, and their `rope_theta` wins over a flat one (HF 5's
    /// `convert_rope_params_to_dict`); the embeddings are tied when either level says so (HF 5's
    /// backward-compatibility rule); `num_key_value_heads: null` means one per attention head.
    pub fn from_json_value(
        mut v: serde_json::Value,
    ) -> std::result::Result<Self, serde_json::Error> {
        use serde_json::Value;
        if let Some(obj) = v.as_object_mut() {
            let tied = |o: &serde_json::Map<String, Value>| {
                o.get("tie_word_embeddings").and_then(Value::as_bool) == Some(true)
            };
            let mut tie = tied(obj);
            if let Some(Value::Object(text)) = obj.remove("text_config") {
                tie |= tied(&text);
                for (k, val) in text {
                    obj.insert(k, val);
                }
            }
            if tie {
                obj.insert("tie_word_embeddings".into(), Value::Bool(true));
            }
            let params = [obj.get("rope_scaling"), obj.get("rope_parameters")]
                .into_iter()
                .flatten()
                .find(|p| p.is_object())
                .cloned();
            let theta = params
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .or(obj.get("rope_theta"))
                .cloned();
            let mut rope = serde_json::Map::new();
            if let Some(sections) = params.as_ref().and_then(|p| p.get("mrope_section")) {
                rope.insert("mrope_section".into(), sections.clone());
            }
            obj.insert("rope_scaling".into(), Value::Object(rope));
            obj.remove("rope_parameters");
            match theta {
                Some(t) if !t.is_null() => obj.insert("rope_theta".into(), t),
                _ => obj.remove("rope_theta"),
            };
            if obj.get("num_key_value_heads").is_some_and(Value::is_null) {
                let heads = obj
                    .get("num_attention_heads")
                    .cloned()
                    .unwrap_or_else(|| default_num_attention_heads().into());
                obj.insert("num_key_value_heads".into(), heads);
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
