//! The text decoder (`model.*`): Qwen2 layers (GQA, RmsNorm, SwiGLU) with multimodal rotary
//! embeddings (M-RoPE) and a KV cache.

use super::config::*;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{
    embedding, linear, linear_no_bias, rms_norm, Activation, Embedding, Linear, RmsNorm, VarBuilder,
};

/// Multimodal rotary embedding. Each position has three coordinates (temporal, height, width);
/// HF computes a full rotary table per coordinate and then takes frequency band `i` of
/// `mrope_section` from coordinate `i`. Because the table is `cat(freqs, freqs)`, selecting on
/// the half-dimension and letting candle's `rope` duplicate it is the same thing.
pub(crate) struct MRope {
    /// `[1, 1, 1, head_dim/2]` f32.
    inv_freq: Tensor,
    sections: [usize; 3],
}

impl MRope {
    pub(crate) fn new(cfg: &Config, device: &Device) -> Result<Self> {
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
    pub(crate) fn cos_sin(&self, pos: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
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

pub(crate) struct TextMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl TextMlp {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

pub(crate) type KvPair = (Tensor, Tensor);

pub(crate) struct TextAttention {
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
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
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
    pub(crate) fn forward(
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

pub(crate) struct DecoderLayer {
    self_attn: TextAttention,
    mlp: TextMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
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

    pub(crate) fn forward(
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

pub(crate) struct TextModel {
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) rope: MRope,
    pub(crate) dtype: DType,
}

impl TextModel {
    pub(crate) fn new(
        cfg: &Config,
        vb_model: VarBuilder,
        lm_head: Option<VarBuilder>,
    ) -> Result<Self> {
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
    pub(crate) fn forward_hidden(
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

    pub(crate) fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.self_attn.kv_cache = None;
        }
    }

    pub(crate) fn kv_snapshot(&self) -> Vec<Option<KvPair>> {
        self.layers
            .iter()
            .map(|l| l.self_attn.kv_cache.clone())
            .collect()
    }

    /// Installs a batch-1 snapshot replicated `n` times along the batch axis.
    pub(crate) fn set_kv_repeated(&mut self, snap: &[Option<KvPair>], n: usize) -> Result<()> {
        for (l, s) in self.layers.iter_mut().zip(snap) {
            l.self_attn.kv_cache = match s {
                None => None,
                Some((k, v)) => Some((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?)),
            };
        }
        Ok(())
    }
}
