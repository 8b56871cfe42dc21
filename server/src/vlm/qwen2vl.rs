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
//! Tokenization, chat template and image preprocessing live in `processor.rs`; this file depends
//! only on candle. Videos are not supported (images only).
//!
//! Reference: transformers `models/qwen2_vl/modeling_qwen2_vl.py`.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{
    embedding, layer_norm, linear, linear_no_bias, rms_norm, Activation, Embedding, LayerNorm,
    LayerNormConfig, Linear, RmsNorm, VarBuilder,
};
use candle_transformers::generation::LogitsProcessor;
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

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
    fn apply(&self, xs: &Tensor) -> Result<Tensor> {
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

// ---------------------------------------------------------------------------------------------
// Vision tower
// ---------------------------------------------------------------------------------------------

/// Conv3d with kernel == stride applied to already-flattened patches is a plain matmul: the
/// processor emits rows in (c, t, y, x) order, which is exactly the flattening of the Conv3d
/// weight `[embed_dim, C, T, P, P]`. Avoids a 3-D convolution that candle does not have.
struct PatchEmbed {
    /// `[C*T*P*P, embed_dim]`, transposed once at load time.
    weight_t: Tensor,
}

impl PatchEmbed {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints(
            (
                cfg.embed_dim,
                cfg.in_channels(),
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let weight_t = w.flatten_from(1)?.t()?.contiguous()?;
        Ok(Self { weight_t })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.matmul(&self.weight_t)
    }
}

struct VisionMlp {
    fc1: Linear,
    fc2: Linear,
    act: VisionAct,
}

impl VisionMlp {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = (cfg.embed_dim as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            fc1: linear(cfg.embed_dim, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, cfg.embed_dim, vb.pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

/// Upper bound on one attention-score tensor in the vision tower. Images of equal length are
/// batched into one matmul up to this size: on GPU that saves kernel launches (32 images, one
/// launch per op); on CPU small chunks that stay in cache and reuse allocations measured 2-3x
/// faster than one large batch, so the CPU budget is small.
fn vision_attn_budget(device: &Device) -> usize {
    if device.is_cpu() {
        8 << 20
    } else {
        1 << 30
    }
}

struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: linear(cfg.embed_dim, cfg.embed_dim * 3, vb.pp("qkv"))?,
            proj: linear(cfg.embed_dim, cfg.embed_dim, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.embed_dim / cfg.num_heads,
        })
    }

    /// `xs`: `[N, embed_dim]` (all patches of all images); `seg_lens`: patches per attention
    /// segment (one per image frame group, HF's `cu_seqlens` differences); `cos`/`sin`:
    /// `[N, head_dim/2]` f32.
    fn forward(
        &self,
        xs: &Tensor,
        seg_lens: &[usize],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let n = xs.dim(0)?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let dtype = xs.dtype();
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((n, 3, h, hd))?
            .permute((1, 2, 0, 3))?; // [3, H, N, hd]
                                     // HF applies the vision rotary embedding in f32 whatever the model dtype.
        let rot = |t: Tensor| -> Result<Tensor> {
            let t = t.unsqueeze(0)?.contiguous()?.to_dtype(DType::F32)?;
            candle_nn::rotary_emb::rope(&t, cos, sin)?
                .to_dtype(dtype)?
                .squeeze(0)
        };
        // Scaling q (N*hd values) is cheaper than scaling the scores (N*N per head).
        let q = (rot(qkv.i(0)?)? * (1.0 / (hd as f64).sqrt()))?; // [H, N, hd]
        let k = rot(qkv.i(1)?)?;
        let v = qkv.i(2)?.contiguous()?;
        let budget = vision_attn_budget(xs.device());

        // Runs of consecutive equal-length segments share one batched matmul.
        let mut runs: Vec<(usize, usize)> = Vec::new(); // (segment length, count)
        for &len in seg_lens {
            match runs.last_mut() {
                Some((l, c)) if *l == len => *c += 1,
                _ => runs.push((len, 1)),
            }
        }
        let mut outs = Vec::new();
        let mut start = 0usize;
        for (len, count) in runs {
            let per_seg = h * len * len * dtype.size_in_bytes();
            let per_chunk = (budget / per_seg.max(1)).max(1);
            let mut done = 0;
            while done < count {
                let c = per_chunk.min(count - done);
                let tok0 = start + done * len;
                let split = |t: &Tensor| -> Result<Tensor> {
                    t.narrow(1, tok0, c * len)?
                        .contiguous()?
                        .reshape((h, c, len, hd))?
                        .transpose(0, 1)?
                        .contiguous() // [c, H, len, hd]
                };
                let (qc, kc, vc) = (split(&q)?, split(&k)?, split(&v)?);
                let att = candle_nn::ops::softmax_last_dim(&qc.matmul(&kc.t()?)?)?;
                let o = att
                    .matmul(&vc)? // [c, H, len, hd]
                    .transpose(1, 2)?
                    .reshape((c * len, h * hd))?;
                outs.push(o);
                done += c;
            }
            start += count * len;
        }
        if start != n {
            candle_core::bail!("vision attention: segments cover {start} patches, input has {n}");
        }
        let o = if outs.len() == 1 {
            outs.pop().unwrap()
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.proj.forward(&o)
    }
}

fn ln_eps6(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        },
        vb,
    )
}

struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: ln_eps6(cfg.embed_dim, vb.pp("norm1"))?,
            norm2: ln_eps6(cfg.embed_dim, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        seg_lens: &[usize],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let xs = (xs
            + self
                .attn
                .forward(&self.norm1.forward(xs)?, seg_lens, cos, sin)?)?;
        &xs + self.mlp.forward(&self.norm2.forward(&xs)?)?
    }
}

/// LayerNorm per patch, then each run of `merge^2` consecutive patches (a 2x2 block, thanks to
/// the processor's ordering) is concatenated and projected to the text width.
struct PatchMerger {
    ln_q: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_dim = cfg.embed_dim * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: ln_eps6(cfg.embed_dim, vb.pp("ln_q"))?,
            fc1: linear(merged_dim, merged_dim, vb.pp("mlp.0"))?,
            fc2: linear(merged_dim, cfg.hidden_size, vb.pp("mlp.2"))?,
            merged_dim,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.ln_q.forward(xs)?.reshape(((), self.merged_dim))?;
        // nn.GELU() in the merger is the exact (erf) GELU.
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}

pub struct VisionModel {
    patch_embed: PatchEmbed,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
    dtype: DType,
    device: Device,
}

impl VisionModel {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        if !cfg.embed_dim.is_multiple_of(cfg.num_heads)
            || !(cfg.embed_dim / cfg.num_heads).is_multiple_of(4)
        {
            candle_core::bail!("vision embed_dim/num_heads must be a multiple of 4");
        }
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed.proj"))?,
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"))?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// cos/sin of the 2-D rotary embedding, `[N, head_dim/2]` each, in HF `rot_pos_emb` order:
    /// patches are visited merge-block by merge-block (the processor's row order), the first
    /// half of the frequencies rotates by the patch row, the second half by the patch column.
    fn rot_pos_cos_sin(&self, grids: &[[usize; 3]]) -> Result<(Tensor, Tensor)> {
        let head_dim = self.cfg.embed_dim / self.cfg.num_heads;
        let rot_dim = head_dim / 2; // VisionRotaryEmbedding(head_dim // 2)
        let inv_freq: Vec<f32> = (0..rot_dim)
            .step_by(2)
            .map(|i| 1f32 / 10000f32.powf(i as f32 / rot_dim as f32))
            .collect();
        let m = self.cfg.spatial_merge_size;
        let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let mut cos = Vec::with_capacity(n * rot_dim);
        let mut sin = Vec::with_capacity(n * rot_dim);
        for &[t, h, w] in grids {
            if !h.is_multiple_of(m) || !w.is_multiple_of(m) {
                candle_core::bail!("grid {h}x{w} is not a multiple of the merge size {m}");
            }
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for mh in 0..m {
                            for mw in 0..m {
                                let (hp, wp) = ((bh * m + mh) as f32, (bw * m + mw) as f32);
                                for p in [hp, wp] {
                                    for &f in &inv_freq {
                                        let a = p * f;
                                        cos.push(a.cos());
                                        sin.push(a.sin());
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (n, rot_dim), &self.device)?;
        let sin = Tensor::from_vec(sin, (n, rot_dim), &self.device)?;
        Ok((cos, sin))
    }

    /// `pixel_values`: `[N, C*T*P*P]` rows from the processor for all images, concatenated;
    /// `grids`: `(t, h, w)` in patches per image. Returns `[N / merge^2, hidden_size]`.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let (rows, dim) = pixel_values.dims2()?;
        if rows != n || dim != self.cfg.patch_dim() {
            candle_core::bail!(
                "pixel_values {:?} do not match grids (expected [{n}, {}])",
                pixel_values.shape(),
                self.cfg.patch_dim()
            );
        }
        let xs = pixel_values.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut xs = self.patch_embed.forward(&xs)?;
        let (cos, sin) = self.rot_pos_cos_sin(grids)?;
        // cu_seqlens: every temporal frame group of every image is its own attention segment.
        let seg_lens: Vec<usize> = grids
            .iter()
            .flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0]))
            .collect();
        for blk in &self.blocks {
            xs = blk.forward(&xs, &seg_lens, &cos, &sin)?;
        }
        self.merger.forward(&xs)
    }
}

// ---------------------------------------------------------------------------------------------
// Text decoder
// ---------------------------------------------------------------------------------------------

/// Multimodal rotary embedding. Each position has three coordinates (temporal, height, width);
/// HF computes a full rotary table per coordinate and then takes frequency band `i` of
/// `mrope_section` from coordinate `i`. Because the table is `cat(freqs, freqs)`, selecting on
/// the half-dimension and letting candle's `rope` duplicate it is the same thing.
struct MRope {
    /// `[1, 1, 1, head_dim/2]` f32.
    inv_freq: Tensor,
    sections: [usize; 3],
}

impl MRope {
    fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let s = &cfg.rope_scaling.mrope_section;
        if s.len() != 3 || s.iter().sum::<usize>() != hd / 2 {
            candle_core::bail!("mrope_section {s:?} must have 3 entries summing to head_dim/2");
        }
        let inv: Vec<f32> = (0..hd)
            .step_by(2)
            .map(|i| (1.0 / cfg.rope_theta.powf(i as f64 / hd as f64)) as f32)
            .collect();
        let half = inv.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv, (1, 1, 1, half), device)?,
            sections: [s[0], s[1], s[2]],
        })
    }

    /// `pos`: `[3, B, L]` f32 -> (cos, sin) `[B, L, head_dim/2]` in `dtype`.
    fn cos_sin(&self, pos: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        // Computed in f32 like HF (it disables autocast for this product).
        let freqs = pos.unsqueeze(D::Minus1)?.broadcast_mul(&self.inv_freq)?; // [3,B,L,half]
        let mut parts = Vec::with_capacity(3);
        let mut off = 0;
        for (axis, &s) in self.sections.iter().enumerate() {
            parts.push(freqs.i(axis)?.narrow(D::Minus1, off, s)?);
            off += s;
        }
        let f = Tensor::cat(&parts, D::Minus1)?.contiguous()?;
        Ok((f.cos()?.to_dtype(dtype)?, f.sin()?.to_dtype(dtype)?))
    }
}

struct TextMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl TextMlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

type KvPair = (Tensor, Tensor);

struct TextAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kv_cache: Option<KvPair>,
}

impl TextAttention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        if !nh.is_multiple_of(nkv) {
            candle_core::bail!("num_attention_heads must be a multiple of num_key_value_heads");
        }
        Ok(Self {
            q_proj: linear(h, nh * hd, vb.pp("q_proj"))?,
            k_proj: linear(h, nkv * hd, vb.pp("k_proj"))?,
            v_proj: linear(h, nkv * hd, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(nh * hd, h, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            kv_cache: None,
        })
    }

    /// `xs`: `[B, L, hidden]`; `cos`/`sin`: `[B, L, hd/2]`; `mask`: additive `[B, 1, L, Lk]`.
    fn forward(
        &mut self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(xs)?
            .reshape((b, l, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k_proj
            .forward(xs)?
            .reshape((b, l, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .v_proj
            .forward(xs)?
            .reshape((b, l, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match &self.kv_cache {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        };
        self.kv_cache = Some((k.clone(), v.clone()));
        let lk = k.dim(2)?;

        // GQA without materialising repeated K/V: query head h uses kv head h / groups, so the
        // groups can be folded into the query-length axis of each kv head.
        let groups = nh / nkv;
        let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, groups * l, hd))?;
        let att = q.matmul(&k.t()?)?.reshape((b, nh, l, lk))?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?.reshape((b, nkv, groups * l, lk))?;
        let o = att
            .matmul(&v)?
            .reshape((b, nh, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, nh * hd))?;
        self.o_proj.forward(&o)
    }
}

struct DecoderLayer {
    self_attn: TextAttention,
    mlp: TextMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: TextAttention::new(cfg, vb.pp("self_attn"))?,
            mlp: TextMlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, cos, sin, mask)?;
        let xs = (xs + h)?;
        &xs + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?
    }
}

struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: MRope,
    dtype: DType,
}

impl TextModel {
    fn new(cfg: &Config, vb_model: VarBuilder, lm_head: Option<VarBuilder>) -> Result<Self> {
        let embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size, vb_model.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb_model.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb_model.pp("norm"))?;
        let lm_head = match lm_head {
            Some(vb) => linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb)?,
            None => Linear::new(embed_tokens.embeddings().clone(), None),
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: MRope::new(cfg, vb_model.device())?,
            dtype: vb_model.dtype(),
        })
    }

    /// Final-norm hidden states `[B, L, hidden]` for embeddings `[B, L, hidden]` at M-RoPE
    /// positions `[3, B, L]` (f32), appending to the KV cache.
    fn forward_hidden(
        &mut self,
        embeds: &Tensor,
        pos: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (cos, sin) = self.rope.cos_sin(pos, self.dtype)?;
        let mut xs = embeds.clone();
        for layer in &mut self.layers {
            xs = layer.forward(&xs, &cos, &sin, mask)?;
        }
        self.norm.forward(&xs)
    }

    fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.self_attn.kv_cache = None;
        }
    }

    fn kv_snapshot(&self) -> Vec<Option<KvPair>> {
        self.layers
            .iter()
            .map(|l| l.self_attn.kv_cache.clone())
            .collect()
    }

    /// Installs a batch-1 snapshot replicated `n` times along the batch axis.
    fn set_kv_repeated(&mut self, snap: &[Option<KvPair>], n: usize) -> Result<()> {
        for (l, s) in self.layers.iter_mut().zip(snap) {
            l.self_attn.kv_cache = match s {
                None => None,
                Some((k, v)) => Some((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?)),
            };
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// M-RoPE position ids (HF `get_rope_index`)
// ---------------------------------------------------------------------------------------------

/// Position ids `[3][len]` (temporal, height, width) for one unpadded sequence, and the
/// `rope_delta` such that a token appended at padded sequence index `p` has position
/// `p + delta` on all three axes. `padded_len` is the row length after left padding, as HF
/// subtracts the padded length.
///
/// Text tokens advance all three axes together; the `t*h*w/merge^2` tokens of an image get
/// `(t, row, col)` offsets from the position after the preceding text, and the text after an
/// image restarts at the image's largest position + 1.
pub fn rope_index(
    input_ids: &[u32],
    grids: &[[usize; 3]],
    cfg: &Config,
    padded_len: usize,
) -> Result<([Vec<i64>; 3], i64)> {
    let m = cfg.vision_config.spatial_merge_size;
    let image = cfg.image_token_id;
    // HF counts images as vision_start tokens followed by an image token.
    let n_images = input_ids
        .windows(2)
        .filter(|w| w[0] == cfg.vision_start_token_id && w[1] == image)
        .count();
    if n_images != grids.len() {
        candle_core::bail!(
            "prompt has {n_images} <|vision_start|><|image_pad|> groups but {} images were given",
            grids.len()
        );
    }
    let mut pos: [Vec<i64>; 3] = Default::default();
    let mut next = 0i64; // max position so far + 1
    let mut st = 0usize;
    for &[t, h, w] in grids {
        let ed = input_ids[st..]
            .iter()
            .position(|&id| id == image)
            .map(|p| p + st)
            .ok_or_else(|| candle_core::Error::Msg("missing image token".into()))?;
        for i in 0..(ed - st) as i64 {
            for axis in &mut pos {
                axis.push(next + i);
            }
        }
        let base = next + (ed - st) as i64;
        let (lh, lw) = (h / m, w / m);
        let mut max = base;
        for ti in 0..t {
            for hi in 0..lh {
                for wi in 0..lw {
                    let p = [base + ti as i64, base + hi as i64, base + wi as i64];
                    for (axis, v) in pos.iter_mut().zip(p) {
                        axis.push(v);
                        max = max.max(v);
                    }
                }
            }
        }
        next = max + 1;
        st = ed + t * lh * lw;
        if st > input_ids.len() || input_ids[ed..st].iter().any(|&id| id != image) {
            candle_core::bail!("image at token {ed} needs {} image tokens", t * lh * lw);
        }
    }
    for i in 0..(input_ids.len() - st) as i64 {
        for axis in &mut pos {
            axis.push(next + i);
        }
    }
    let max = pos
        .iter()
        .flat_map(|a| a.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok((pos, max + 1 - padded_len as i64))
}

// ---------------------------------------------------------------------------------------------
// Full model and token-id level API
// ---------------------------------------------------------------------------------------------

/// One preprocessed image: `pixel_values` `[t*h*w, C*T*P*P]` (any device/dtype) and its grid.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub pixel_values: Tensor,
    pub grid_thw: [usize; 3],
}

/// A prompt at the token level: ids with every image already expanded to its
/// `<|vision_start|>` + `image_token_id` x n + `<|vision_end|>` run, and the images in order.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub input_ids: Vec<u32>,
    pub images: Vec<ImageInput>,
}

#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    /// `None` (or ~0) = greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub eos_token_ids: Vec<u32>,
    /// Keep generating past eos (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: None,
            top_p: None,
            seed: 299792458,
            eos_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// How a multi-token label's log-probabilities are combined before the softmax over labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelScore {
    /// Log-probability of the whole answer (label tokens plus the closing `<|im_end|>` the
    /// caller appends): the probability of exactly that answer.
    #[default]
    Sum,
    /// Mean per-token log-probability (length normalised).
    Mean,
}

/// Per-row bookkeeping of a batch in the KV cache.
#[derive(Debug, Clone)]
struct BatchState {
    /// `[B][Lk]`: false for left padding (and right padding of scored continuations).
    key_valid: Vec<Vec<bool>>,
    /// Per row: position of padded index `p` is `p + delta`.
    deltas: Vec<i64>,
}

impl BatchState {
    fn repeat(&self, n: usize) -> Self {
        Self {
            key_valid: vec![self.key_valid[0].clone(); n],
            deltas: vec![self.deltas[0]; n],
        }
    }
}

pub struct Qwen2VlModel {
    vision: VisionModel,
    text: TextModel,
    cfg: Config,
    device: Device,
    dtype: DType,
}

impl Qwen2VlModel {
    /// `vb` is rooted at the checkpoint's top level. Both key layouts are accepted:
    /// hub (`model.*`, `visual.*`, `lm_head.*`) and newer transformers
    /// (`model.language_model.*`, `model.visual.*`). `lm_head` falls back to the tied embedding.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (vb_text, vb_vis) = if vb.contains_tensor("model.language_model.embed_tokens.weight") {
            (vb.pp("model.language_model"), vb.pp("model.visual"))
        } else {
            (vb.pp("model"), vb.pp("visual"))
        };
        let lm_head = vb
            .contains_tensor("lm_head.weight")
            .then(|| vb.pp("lm_head"));
        Ok(Self {
            vision: VisionModel::new(&cfg.vision_config, vb_vis)?,
            text: TextModel::new(cfg, vb_text, lm_head)?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Vision-tower output `[sum(t*h*w)/merge^2, hidden]` for concatenated patch rows.
    pub fn vision_embeds(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grids)
    }

    pub fn clear_kv_cache(&mut self) {
        self.text.clear_kv_cache()
    }

    fn pad_id(&self) -> u32 {
        self.cfg
            .pad_token_id
            .or_else(|| self.cfg.eos_token_ids().first().copied())
            .unwrap_or(0)
    }

    /// Additive mask `[B, 1, Lq, Lk]` for the last `lq` entries of `state`. A query may see
    /// valid keys up to itself; a padding query sees only itself, so no row is all `-inf`
    /// (no NaN enters the cache) and real rows never see padding. `None` when nothing is masked.
    fn build_mask(&self, state: &BatchState, lq: usize) -> Result<Option<Tensor>> {
        let b = state.key_valid.len();
        let lk = state.key_valid[0].len();
        let past = lk - lq;
        if lq == 1 && state.key_valid.iter().all(|r| r.iter().all(|&v| v)) {
            return Ok(None);
        }
        let mut m = vec![0f32; b * lq * lk];
        for (bi, row) in state.key_valid.iter().enumerate() {
            for i in 0..lq {
                let qp = past + i;
                let off = (bi * lq + i) * lk;
                for (j, &valid) in row.iter().enumerate() {
                    if !((j <= qp && valid) || j == qp) {
                        m[off + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, lq, lk), &self.device)?
            .to_dtype(self.dtype)
            .map(Some)
    }

    /// Runs the vision tower and the decoder over left-padded prompts, filling the KV cache.
    /// Returns logits `[B, L, V]` (`all_logits`) or `[B, V]` for the last position.
    fn prefill(&mut self, prompts: &[Prompt], all_logits: bool) -> Result<(Tensor, BatchState)> {
        self.text.clear_kv_cache();
        if prompts.is_empty() || prompts.iter().any(|p| p.input_ids.is_empty()) {
            candle_core::bail!("prefill needs at least one non-empty prompt");
        }
        let b = prompts.len();
        let l = prompts.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let images: Vec<&ImageInput> = prompts.iter().flat_map(|p| p.images.iter()).collect();
        // All images of the batch go through the tower together; attention stays per image.
        let vision = if images.is_empty() {
            None
        } else {
            let pv = images
                .iter()
                .map(|i| i.pixel_values.to_device(&self.device))
                .collect::<Result<Vec<_>>>()?;
            let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
            Some(self.vision.forward(&Tensor::cat(&pv, 0)?, &grids)?)
        };
        let n_vis = match &vision {
            Some(v) => v.dim(0)?,
            None => 0,
        };

        let pad = self.pad_id();
        let mut ids = Vec::with_capacity(b * l);
        let mut gather = Vec::with_capacity(b * l);
        let mut pos = vec![1f32; 3 * b * l]; // HF leaves padding at position 1
        let mut state = BatchState {
            key_valid: Vec::with_capacity(b),
            deltas: Vec::with_capacity(b),
        };
        let mut vis_k = 0usize;
        for (bi, p) in prompts.iter().enumerate() {
            let npad = l - p.input_ids.len();
            let grids: Vec<[usize; 3]> = p.images.iter().map(|i| i.grid_thw).collect();
            let (rp, delta) = rope_index(&p.input_ids, &grids, &self.cfg, l)?;
            state.deltas.push(delta);
            state.key_valid.push((0..l).map(|j| j >= npad).collect());
            for j in 0..l {
                let flat = bi * l + j;
                if j < npad {
                    ids.push(pad);
                    gather.push(flat as u32);
                    continue;
                }
                let id = p.input_ids[j - npad];
                if id as usize >= self.cfg.vocab_size {
                    candle_core::bail!("token id {id} out of vocabulary");
                }
                ids.push(id);
                if id == self.cfg.image_token_id {
                    // HF masked_scatter: image embeddings fill image tokens in row-major order.
                    gather.push((b * l + vis_k) as u32);
                    vis_k += 1;
                } else {
                    gather.push(flat as u32);
                }
                for (axis, a) in rp.iter().enumerate() {
                    pos[(axis * b + bi) * l + j] = a[j - npad] as f32;
                }
            }
        }
        if vis_k != n_vis {
            candle_core::bail!("{vis_k} image tokens but the images give {n_vis} embeddings");
        }
        let ids = Tensor::from_vec(ids, (b * l,), &self.device)?;
        let mut embeds = self.text.embed_tokens.forward(&ids)?;
        if let Some(v) = vision {
            // One gather replaces image-token rows by vision rows; works on every device.
            let table = Tensor::cat(&[&embeds, &v.to_dtype(embeds.dtype())?], 0)?;
            let idx = Tensor::from_vec(gather, (b * l,), &self.device)?;
            embeds = table.index_select(&idx, 0)?;
        }
        let embeds = embeds.reshape((b, l, self.cfg.hidden_size))?;
        let pos = Tensor::from_vec(pos, (3, b, l), &self.device)?;
        let mask = self.build_mask(&state, l)?;
        let hidden = self.text.forward_hidden(&embeds, &pos, mask.as_ref())?;
        let logits = if all_logits {
            self.text.lm_head.forward(&hidden)?
        } else {
            // Left padding puts every row's last real token in the last column.
            self.text
                .lm_head
                .forward(&hidden.i((.., l - 1, ..))?.contiguous()?)?
        };
        Ok((logits, state))
    }

    /// Appends `tokens` (`[B][Lq]`, equal lengths; `valid` marks padding) after the cached
    /// batch. Returns logits `[B, Lq, V]`.
    fn extend(
        &mut self,
        tokens: &[Vec<u32>],
        valid: &[Vec<bool>],
        state: &mut BatchState,
    ) -> Result<Tensor> {
        let b = tokens.len();
        let lq = tokens[0].len();
        let past = state.key_valid[0].len();
        let mut pos = vec![0f32; 3 * b * lq];
        for bi in 0..b {
            state.key_valid[bi].extend_from_slice(&valid[bi]);
            for i in 0..lq {
                let p = (past + i) as i64 + state.deltas[bi];
                for axis in 0..3 {
                    pos[(axis * b + bi) * lq + i] = p as f32;
                }
            }
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, lq), &self.device)?;
        let embeds = self.text.embed_tokens.forward(&ids)?;
        let pos = Tensor::from_vec(pos, (3, b, lq), &self.device)?;
        let mask = self.build_mask(state, lq)?;
        let hidden = self.text.forward_hidden(&embeds, &pos, mask.as_ref())?;
        self.text.lm_head.forward(&hidden)
    }

    /// Logits `[B, L, V]` at every position of the (left-padded) prompts.
    pub fn forward_prompts(&mut self, prompts: &[Prompt]) -> Result<Tensor> {
        let (logits, _) = self.prefill(prompts, true)?;
        self.text.clear_kv_cache();
        Ok(logits)
    }

    /// Batched generation: one prefill for all prompts (left padded), then one decoder step per
    /// new token for the whole batch. Returns the new tokens of each prompt, eos excluded.
    pub fn generate(&mut self, prompts: &[Prompt], p: &GenerationParams) -> Result<Vec<Vec<u32>>> {
        let b = prompts.len();
        let mut out = vec![Vec::new(); b];
        if b == 0 || p.max_new_tokens == 0 {
            return Ok(out);
        }
        let greedy = p.temperature.is_none_or(|t| t < 1e-7);
        let mut procs: Vec<LogitsProcessor> = (0..b)
            .map(|i| LogitsProcessor::new(p.seed.wrapping_add(i as u64), p.temperature, p.top_p))
            .collect();
        let (mut logits, mut state) = self.prefill(prompts, false)?; // [B, V]
        let mut done = vec![false; b];
        for step in 0..p.max_new_tokens {
            let next: Vec<u32> = if greedy {
                // One device-side argmax for the batch instead of B host round trips.
                logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?
            } else {
                let logits = logits.to_dtype(DType::F32)?;
                (0..b)
                    .map(|i| procs[i].sample(&logits.i(i)?))
                    .collect::<Result<Vec<_>>>()?
            };
            for i in 0..b {
                if done[i] {
                    continue;
                }
                if !p.ignore_eos && p.eos_token_ids.contains(&next[i]) {
                    done[i] = true;
                } else {
                    out[i].push(next[i]);
                }
            }
            if done.iter().all(|&d| d) || step + 1 == p.max_new_tokens {
                break;
            }
            // Finished rows keep decoding (their tokens are ignored) so the batch stays square.
            let toks: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            let valid = vec![vec![true]; b];
            logits = self.extend(&toks, &valid, &mut state)?.squeeze(1)?;
        }
        self.text.clear_kv_cache();
        Ok(out)
    }

    /// Log-likelihood of each continuation after `prompt`: `(sum of log-probs, token count)`.
    /// The prompt (and its images) is encoded once; its KV cache is then replicated for up to
    /// `chunk` continuations at a time, which run as one right-padded batch.
    pub fn score_continuations(
        &mut self,
        prompt: &Prompt,
        continuations: &[Vec<u32>],
        chunk: usize,
    ) -> Result<Vec<(f32, usize)>> {
        if let Some(bad) = continuations
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!("token id {bad} out of vocabulary");
        }
        let (last, state) = self.prefill(std::slice::from_ref(prompt), false)?;
        let first_lp: Vec<f32> =
            candle_nn::ops::log_softmax(&last.to_dtype(DType::F32)?, D::Minus1)?
                .squeeze(0)?
                .to_vec1()?;
        let snap = self.text.kv_snapshot();
        let pad = self.pad_id();
        let mut out = Vec::with_capacity(continuations.len());
        for group in continuations.chunks(chunk.max(1)) {
            let mut scores: Vec<(f32, usize)> = group
                .iter()
                .map(|c| (c.first().map_or(0.0, |&t| first_lp[t as usize]), c.len()))
                .collect();
            let maxn = group.iter().map(|c| c.len()).max().unwrap_or(0);
            if maxn > 1 {
                let n = group.len();
                let lq = maxn - 1;
                self.text.set_kv_repeated(&snap, n)?;
                let mut st = state.repeat(n);
                let mut toks = Vec::with_capacity(n);
                let mut valid = Vec::with_capacity(n);
                let mut targets = Vec::with_capacity(n * lq);
                for c in group {
                    let k = c.len().saturating_sub(1);
                    let mut t: Vec<u32> = c[..k].to_vec();
                    t.resize(lq, pad);
                    toks.push(t);
                    valid.push((0..lq).map(|i| i < k).collect::<Vec<_>>());
                    targets.extend((0..lq).map(|i| if i < k { c[i + 1] } else { 0 }));
                }
                let logits = self.extend(&toks, &valid, &mut st)?.to_dtype(DType::F32)?;
                let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                let tgt = Tensor::from_vec(targets, (n, lq, 1), &self.device)?;
                let picked: Vec<Vec<f32>> = lp.gather(&tgt, 2)?.squeeze(2)?.to_vec2()?;
                for ((s, c), row) in scores.iter_mut().zip(group).zip(picked) {
                    s.0 += row.iter().take(c.len().saturating_sub(1)).sum::<f32>();
                }
            }
            out.extend(scores);
        }
        self.text.clear_kv_cache();
        Ok(out)
    }

    /// Zero-shot classification at the id level: probability of each label (softmax over
    /// labels of the reduced log-likelihood of its tokens as the answer to `prompt`).
    pub fn classify(
        &mut self,
        prompt: &Prompt,
        labels: &[Vec<u32>],
        reduce: LabelScore,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let scores = self.score_continuations(prompt, labels, chunk)?;
        let s: Vec<f32> = scores
            .iter()
            .map(|&(sum, n)| match reduce {
                LabelScore::Sum => sum,
                LabelScore::Mean => sum / n.max(1) as f32,
            })
            .collect();
        Ok(softmax(&s))
    }
}

/// Numerically stable softmax of a small host vector.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = xs.iter().map(|&x| (x - max).exp()).collect();
    let z: f32 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}
