//! ConvNeXt (v1, and v2 where the checkpoint has GRN) as timm builds it, with timm's key names.
//!
//! The sizes differ only in depths, widths and the MLP form: atto…nano store the block MLP as
//! 1×1 convs (`conv_mlp`, fc weights [4C, C, 1, 1]) with a channels-first LayerNorm, tiny…xlarge
//! as linear layers ([4C, C]) after a permute. Both are the same function, so this file runs
//! every block channels-last with one matmul per layer and only reshapes the conv weights.
//! v2 (GRN in the MLP, no layer-scale `gamma`) is detected per block from the keys present.
//! Input is NCHW, already normalised with ImageNet mean/std.
//!
//! The network runs channels-last from the stem on ([`kadr_kernels::nhwc`]): the stem and downsample
//! convs are patch matmuls, each block is depthwise conv → LayerNorm over rows → fc1 with
//! GELU fused → fc2 with the residual add fused, and the layer-scale `gamma` is folded into
//! fc2's weight and bias at load time. No layout permute runs between layers.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use kadr_kernels::layout::Pad4;
use kadr_kernels::nhwc::{self, Epilogue};

/// timm's LayerNorm / LayerNorm2d epsilon for ConvNeXt.
const LN_EPS: f64 = 1e-6;
/// timm's `GlobalResponseNorm` epsilon.
const GRN_EPS: f64 = 1e-6;

/// Depths and widths of the four stages, and whether the block MLP is stored as 1×1 convs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub depths: Vec<usize>,
    pub dims: Vec<usize>,
    pub conv_mlp: bool,
}

impl Config {
    fn new(depths: [usize; 4], dims: [usize; 4], conv_mlp: bool) -> Self {
        Self {
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            conv_mlp,
        }
    }

    pub fn atto() -> Self {
        Self::new([2, 2, 6, 2], [40, 80, 160, 320], true)
    }
    pub fn femto() -> Self {
        Self::new([2, 2, 6, 2], [48, 96, 192, 384], true)
    }
    pub fn pico() -> Self {
        Self::new([2, 2, 6, 2], [64, 128, 256, 512], true)
    }
    pub fn nano() -> Self {
        Self::new([2, 2, 8, 2], [80, 160, 320, 640], true)
    }
    pub fn tiny() -> Self {
        Self::new([3, 3, 9, 3], [96, 192, 384, 768], false)
    }
    pub fn small() -> Self {
        Self::new([3, 3, 27, 3], [96, 192, 384, 768], false)
    }
    pub fn base() -> Self {
        Self::new([3, 3, 27, 3], [128, 256, 512, 1024], false)
    }
    pub fn large() -> Self {
        Self::new([3, 3, 27, 3], [192, 384, 768, 1536], false)
    }
    pub fn xlarge() -> Self {
        Self::new([3, 3, 27, 3], [256, 512, 1024, 2048], false)
    }

    /// Reads depths, widths and MLP form from a timm checkpoint's keys and shapes, so any
    /// timm ConvNeXt loads without being told its size.
    pub fn from_weights(vb: &VarBuilder) -> Result<Self> {
        let (mut depths, mut dims, mut conv_mlp) = (vec![], vec![], false);
        for s in 0.. {
            let block = |i: usize, key: &str| format!("stages.{s}.blocks.{i}.{key}");
            if !vb.contains_tensor(&block(0, "conv_dw.weight")) {
                break;
            }
            let depth = (0..)
                .take_while(|&i| vb.contains_tensor(&block(i, "conv_dw.weight")))
                .count();
            depths.push(depth);
            dims.push(vb.get_unchecked(&block(0, "conv_dw.weight"))?.dim(0)?);
            conv_mlp = vb.get_unchecked(&block(0, "mlp.fc1.weight"))?.rank() == 4;
        }
        if depths.is_empty() {
            candle_core::bail!("no ConvNeXt stages found under '{}'", vb.prefix())
        }
        Ok(Self {
            depths,
            dims,
            conv_mlp,
        })
    }
}

/// LayerNorm over the last dim (timm `LayerNorm`, and `LayerNorm2d` once channels-last).
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, LN_EPS as f32)
    }
}

/// A linear layer as (weight [out, in], bias [out]); the weight may be stored as a 1×1 conv.
struct Fc {
    w: Tensor,
    b: Tensor,
}

impl Fc {
    fn load(cin: usize, cout: usize, conv: bool, vb: VarBuilder) -> Result<Self> {
        let w = if conv {
            vb.get((cout, cin, 1, 1), "weight")?.reshape((cout, cin))?
        } else {
            vb.get((cout, cin), "weight")?
        };
        Ok(Self {
            w,
            b: vb.get(cout, "bias")?,
        })
    }

    /// A stride-`k` `k`×`k` conv, as the linear layer over [`nhwc::patches`] rows.
    fn patchify(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            w: nhwc::conv_weight_rows(&vb.get((cout, cin, k, k), "weight")?)?,
            b: vb.get(cout, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        nhwc::linear(x, &self.w, &self.b, epilogue)
    }
}

/// timm `GlobalResponseNorm` (ConvNeXt v2), channels-last on [B, HW, C].
struct Grn {
    weight: Tensor,
    bias: Tensor,
}

impl Grn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gx = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        let nx = gx.broadcast_div(&(gx.mean_keepdim(D::Minus1)? + GRN_EPS)?)?;
        let y = x.broadcast_mul(&nx)?.broadcast_mul(&self.weight)?;
        x + y.broadcast_add(&self.bias)?
    }
}

struct Block {
    /// Depthwise 7×7 weight as [7, 7, C].
    dw_weight: Tensor,
    dw_bias: Tensor,
    norm: Norm,
    fc1: Fc,
    grn: Option<Grn>,
    /// fc2 with the layer-scale `gamma` folded in (`gamma · (W x + b)`).
    fc2: Fc,
}

impl Block {
    fn load(dim: usize, conv_mlp: bool, vb: VarBuilder) -> Result<Self> {
        let hidden = 4 * dim;
        let grn = if vb.contains_tensor("mlp.grn.weight") {
            let g = vb.pp("mlp.grn");
            Some(Grn {
                weight: g.get(hidden, "weight")?,
                bias: g.get(hidden, "bias")?,
            })
        } else {
            None
        };
        let mut fc2 = Fc::load(hidden, dim, conv_mlp, vb.pp("mlp.fc2"))?;
        if vb.contains_tensor("gamma") {
            let gamma = vb.get(dim, "gamma")?;
            fc2 = Fc {
                w: fc2.w.broadcast_mul(&gamma.unsqueeze(1)?)?,
                b: (fc2.b * &gamma)?,
            };
        }
        Ok(Self {
            dw_weight: nhwc::dw_weight(&vb.get((dim, 1, 7, 7), "conv_dw.weight")?)?,
            dw_bias: vb.get(dim, "conv_dw.bias")?,
            norm: Norm::load(dim, vb.pp("norm"))?,
            fc1: Fc::load(dim, hidden, conv_mlp, vb.pp("mlp.fc1"))?,
            grn,
            fc2,
        })
    }

    /// `x` [B, H, W, C] → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let y = nhwc::dwconv(x, &self.dw_weight, &self.dw_bias, 1, Pad4::uniform(3), None)?;
        // [B·H·W, C] so each MLP layer is a single large matmul.
        let y = self.norm.forward(&y.reshape((b * h * w, c))?)?;
        let y = self.fc1.forward(&y, Epilogue::BiasGelu)?;
        let y = match &self.grn {
            Some(grn) => grn
                .forward(&y.reshape((b, h * w, ()))?)?
                .reshape((b * h * w, ()))?,
            None => y,
        };
        let y = self
            .fc2
            .forward(&y, Epilogue::BiasResidual(&x.reshape((b * h * w, c))?))?;
        y.reshape((b, h, w, c))
    }
}

struct Stage {
    /// LayerNorm2d + 2×2 stride-2 conv; absent in stage 0, where the stem already downsamples.
    downsample: Option<(Norm, Fc)>,
    blocks: Vec<Block>,
}

/// timm `ConvNeXt` with its classifier head, inference only.
pub struct ConvNeXt {
    /// 4×4 stride-4 conv + LayerNorm2d.
    stem: (Fc, Norm),
    stages: Vec<Stage>,
    head_norm: Norm,
    head_fc: Option<Fc>,
}

impl ConvNeXt {
    /// Loads from timm key names (`stem.*`, `stages.N.*`, `head.norm`, `head.fc`); `head.fc` is
    /// optional so backbone-only checkpoints load too.
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let stem = (
            Fc::patchify(3, cfg.dims[0], 4, vb.pp("stem.0"))?,
            Norm::load(cfg.dims[0], vb.pp("stem.1"))?,
        );
        let mut stages = Vec::new();
        for (s, (&depth, &dim)) in cfg.depths.iter().zip(&cfg.dims).enumerate() {
            let vb = vb.pp(format!("stages.{s}"));
            let downsample = if s == 0 {
                None
            } else {
                let prev = cfg.dims[s - 1];
                let ds = vb.pp("downsample");
                Some((
                    Norm::load(prev, ds.pp("0"))?,
                    Fc::patchify(prev, dim, 2, ds.pp("1"))?,
                ))
            };
            let blocks = (0..depth)
                .map(|i| Block::load(dim, cfg.conv_mlp, vb.pp(format!("blocks.{i}"))))
                .collect::<Result<_>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let last = *cfg.dims.last().unwrap_or(&0);
        let head_norm = Norm::load(last, vb.pp("head.norm"))?;
        let head_fc = if vb.contains_tensor("head.fc.weight") {
            let classes = vb.get_unchecked("head.fc.weight")?.dim(0)?;
            Some(Fc::load(last, classes, false, vb.pp("head.fc"))?)
        } else {
            None
        };
        Ok(Self {
            stem,
            stages,
            head_norm,
            head_fc,
        })
    }

    /// Feature map of the last stage, channels-last: [B, H/32, W/32, C].
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let rows = nhwc::patches(&x.permute((0, 2, 3, 1))?, 4)?;
        let y = self.stem.0.forward(&rows, Epilogue::Bias)?;
        let mut x = self.stem.1.forward(&y)?.reshape((b, h / 4, w / 4, ()))?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                let (b, h, w, c) = x.dims4()?;
                let y = norm.forward(&x.reshape((b * h * w, c))?)?;
                let rows = nhwc::patches(&y.reshape((b, h, w, c))?, 2)?;
                x = conv
                    .forward(&rows, Epilogue::Bias)?
                    .reshape((b, h / 2, w / 2, ()))?;
            }
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
        }
        Ok(x)
    }

    /// Global average pool + `head.norm`: the [B, C] embedding.
    pub fn forward_pre_logits(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = self.forward_features(x)?.mean((1, 2))?;
        self.head_norm.forward(&pooled)
    }

    /// Pre-logits → class logits (`head.fc`).
    pub fn forward_head(&self, pre_logits: &Tensor) -> Result<Tensor> {
        match &self.head_fc {
            Some(fc) => fc.forward(pre_logits, Epilogue::Bias),
            None => candle_core::bail!("this ConvNeXt checkpoint has no head.fc"),
        }
    }
}
