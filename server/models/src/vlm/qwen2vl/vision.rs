//! The vision tower (`visual.*`): the Conv3d patch embedding as one matmul over the flattened
//! `C*T*P*P` rows, blocks of LayerNorm + 2-D rotary attention + QuickGELU MLP with attention
//! confined to each image (HF's `cu_seqlens`), and the `PatchMerger` (2x2 patches -> one token).

use super::config::*;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, LayerNormConfig, Linear, VarBuilder};

/// Conv3d with kernel == stride applied to already-flattened patches is a plain matmul: the
/// processor emits rows in (c, t, y, x) order, which is exactly the flattening of the Conv3d
/// weight `[embed_dim, C, T, P, P]`. Avoids a 3-D convolution that candle does not have.
pub(crate) struct PatchEmbed {
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

pub(crate) struct VisionMlp {
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
pub(crate) fn vision_attn_budget(device: &Device) -> usize {
    if device.is_cpu() {
        8 << 20
    } else {
        1 << 30
    }
}

pub(crate) struct VisionAttention {
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

pub(crate) fn ln_eps6(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        },
        vb,
    )
}

pub(crate) struct VisionBlock {
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
pub(crate) struct PatchMerger {
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
                                    // f32 like HF's `1.0 / theta ** (arange(0, dim, 2, dtype=float) / dim)`.
        let theta = self.cfg.rope_theta() as f32;
        let inv_freq: Vec<f32> = (0..rot_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / rot_dim as f32))
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
