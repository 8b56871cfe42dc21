//! EfficientNet-Lite0 as timm builds `tf_efficientnet_lite0`, with timm's key names.
//!
//! Lite differs from EfficientNet-B0 where mobile accelerators need it: no squeeze-excite,
//! ReLU6 instead of SiLU, and a stem (32) and head (1280) that do not scale. The `tf_` weights
//! were trained in TensorFlow, so every k×k conv uses TF "SAME" padding, asymmetric and computed
//! from the input size, and BatchNorm uses eps 1e-3. BatchNorm is folded into the preceding conv
//! at load time: inference only, and one pass fewer per layer. Input is RGB `(x - 127) / 128`.
//!
//! After the stem the network runs channels-last ([`kadr_kernels::nhwc`]): every 1×1 conv is one
//! matmul over `[N·H·W, C]` with its bias, ReLU6 or residual add fused, and the depthwise convs
//! vectorise across channels.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use kadr_kernels::depthwise::channel_bias_clamp;
use kadr_kernels::layout::Pad4;
use kadr_kernels::nhwc::{self, Epilogue};

/// TensorFlow's BatchNorm epsilon, kept by timm for the `tf_` ports.
const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
/// Width of the pooled embedding (`forward_features`).
pub const NUM_FEATURES: usize = 1280;

/// One stage of timm's arch_def for `efficientnet_lite`: `ds_r1_k3_s1_e1_c16`, `ir_r2_k3_s2_e6_c24`, ...
struct StageArgs {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    out: usize,
}

/// Lite0: channel multiplier 1.0, depth multiplier 1.0. Stage 0 is the depthwise-separable block.
const LITE0: [StageArgs; 7] = [
    StageArgs {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 1,
        out: 16,
    },
    StageArgs {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand: 6,
        out: 24,
    },
    StageArgs {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand: 6,
        out: 40,
    },
    StageArgs {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand: 6,
        out: 80,
    },
    StageArgs {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand: 6,
        out: 112,
    },
    StageArgs {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand: 6,
        out: 192,
    },
    StageArgs {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 6,
        out: 320,
    },
];

/// ReLU6 as a clamp range, fused into the conv epilogues.
const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));
/// Linear output (the projection convs): no activation.
const LINEAR: Option<(f32, f32)> = None;

/// Loads BatchNorm `vb` and folds it into conv weight `w` [out, ...]: returns (w', bias').
/// Folding is done in f64 so the fused weights round once, not twice.
fn fold_bn(w: Tensor, vb: VarBuilder) -> Result<(Tensor, Tensor)> {
    let (out, dtype) = (w.dim(0)?, w.dtype());
    let get = |name: &str| -> Result<Tensor> { vb.get(out, name)?.to_dtype(DType::F64) };
    let (gamma, beta) = (get("weight")?, get("bias")?);
    let (mean, var) = (get("running_mean")?, get("running_var")?);
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let bias = (beta - (mean * &scale)?)?;
    let mut shape = vec![1usize; w.rank()];
    shape[0] = out;
    let w = w
        .to_dtype(DType::F64)?
        .broadcast_mul(&scale.reshape(shape)?)?;
    Ok((w.to_dtype(dtype)?, bias.to_dtype(dtype)?))
}

/// A k×k dense conv with TF "SAME" padding and folded BN (only the stem uses it).
struct ConvSame {
    w: Tensor,
    /// `w` as [Cout, K·K·Cin] for im2col rows.
    rows: Tensor,
    b: Tensor,
    stride: usize,
}

impl ConvSame {
    fn load(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        conv: VarBuilder,
        bn: VarBuilder,
    ) -> Result<Self> {
        let (w, b) = fold_bn(conv.get((cout, cin, k, k), "weight")?, bn)?;
        Ok(Self {
            rows: nhwc::conv_weight_rows(&w)?,
            w,
            b,
            stride,
        })
    }

    /// `x` NCHW → NHWC output.
    fn forward(&self, x: &Tensor, act: Option<(f32, f32)>) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.w.dims4()?;
        let p = Pad4::tf_same(h, w, kh, kw, self.stride);
        if let Some(rows) = nhwc::im2col_nchw(x, kh, self.stride, p)? {
            let (oh, ow) = (h.div_ceil(self.stride), w.div_ceil(self.stride));
            let epilogue = match act {
                Some((lo, hi)) => Epilogue::BiasClamp(lo, hi),
                None => Epilogue::Bias,
            };
            return nhwc::linear(&rows, &self.rows, &self.b, epilogue)?.reshape((n, oh, ow, ()));
        }
        let x = x
            .pad_with_zeros(2, p.top, p.bottom)?
            .pad_with_zeros(3, p.left, p.right)?;
        channel_bias_clamp(x.conv2d(&self.w, 0, self.stride, 1, 1)?, &self.b, act)?
            .permute((0, 2, 3, 1))?
            .contiguous()
    }
}

/// Depthwise k×k conv, TF "SAME", folded BN.
struct DwSame {
    /// [K, K, C].
    w: Tensor,
    b: Tensor,
    stride: usize,
}

impl DwSame {
    fn load(c: usize, k: usize, stride: usize, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        let (w, b) = fold_bn(conv.get((c, 1, k, k), "weight")?, bn)?;
        Ok(Self {
            w: nhwc::dw_weight(&w)?,
            b,
            stride,
        })
    }

    /// `x` [N, H, W, C].
    fn forward(&self, x: &Tensor, act: Option<(f32, f32)>) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let (kh, kw, _) = self.w.dims3()?;
        let p = Pad4::tf_same(h, w, kh, kw, self.stride);
        nhwc::dwconv(x, &self.w, &self.b, self.stride, p, act)
    }
}

/// 1×1 conv with folded BN: one matmul over all pixels of the batch.
struct Pointwise {
    w: Tensor,
    b: Tensor,
}

impl Pointwise {
    fn load(cin: usize, cout: usize, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        let (w, b) = fold_bn(conv.get((cout, cin, 1, 1), "weight")?, bn)?;
        Ok(Self {
            w: w.reshape((cout, cin))?,
            b,
        })
    }

    /// `x` [N, H, W, C]; `residual`, when given, is added (it has the output's shape).
    fn forward(
        &self,
        x: &Tensor,
        act: Option<(f32, f32)>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let rows = x.reshape((n * h * w, c))?;
        let r = residual.map(|r| r.reshape((n * h * w, ()))).transpose()?;
        let epilogue = match (act, &r) {
            (_, Some(r)) => Epilogue::BiasResidual(r),
            (Some((lo, hi)), None) => Epilogue::BiasClamp(lo, hi),
            (None, None) => Epilogue::Bias,
        };
        nhwc::linear(&rows, &self.w, &self.b, epilogue)?.reshape((n, h, w, ()))
    }
}

enum Block {
    /// timm `DepthwiseSeparableConv`: conv_dw, bn1 + ReLU6, conv_pw, bn2 (no activation).
    DepthwiseSeparable {
        dw: DwSame,
        pw: Pointwise,
        skip: bool,
    },
    /// timm `InvertedResidual`: conv_pw, bn1 + ReLU6, conv_dw, bn2 + ReLU6, conv_pwl, bn3.
    InvertedResidual {
        pw: Pointwise,
        dw: DwSame,
        pwl: Pointwise,
        skip: bool,
    },
}

impl Block {
    fn load(cin: usize, args: &StageArgs, stride: usize, vb: VarBuilder) -> Result<Self> {
        // timm: residual only where the block keeps both resolution and width.
        let skip = stride == 1 && cin == args.out;
        if args.expand == 1 {
            Ok(Self::DepthwiseSeparable {
                dw: DwSame::load(cin, args.kernel, stride, vb.pp("conv_dw"), vb.pp("bn1"))?,
                pw: Pointwise::load(cin, args.out, vb.pp("conv_pw"), vb.pp("bn2"))?,
                skip,
            })
        } else {
            let mid = cin * args.expand;
            Ok(Self::InvertedResidual {
                pw: Pointwise::load(cin, mid, vb.pp("conv_pw"), vb.pp("bn1"))?,
                dw: DwSame::load(mid, args.kernel, stride, vb.pp("conv_dw"), vb.pp("bn2"))?,
                pwl: Pointwise::load(mid, args.out, vb.pp("conv_pwl"), vb.pp("bn3"))?,
                skip,
            })
        }
    }

    /// `x` [N, H, W, C].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::DepthwiseSeparable { dw, pw, skip } => {
                pw.forward(&dw.forward(x, RELU6)?, LINEAR, skip.then_some(x))
            }
            Self::InvertedResidual { pw, dw, pwl, skip } => {
                let y = pw.forward(x, RELU6, None)?;
                let y = dw.forward(&y, RELU6)?;
                pwl.forward(&y, LINEAR, skip.then_some(x))
            }
        }
    }
}

/// timm `tf_efficientnet_lite0`, inference only.
pub struct EfficientNetLite {
    stem: ConvSame,
    blocks: Vec<Block>,
    head: Pointwise,
    /// (weight [1000, 1280], bias [1000]).
    classifier: (Tensor, Tensor),
}

impl EfficientNetLite {
    /// Loads from timm key names (`conv_stem`, `bn1`, `blocks.S.I.*`, `conv_head`, `bn2`,
    /// `classifier`). Weights must be f32.
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let stem = ConvSame::load(3, STEM_CHANNELS, 3, 2, vb.pp("conv_stem"), vb.pp("bn1"))?;
        let mut blocks = Vec::new();
        let mut cin = STEM_CHANNELS;
        for (s, args) in LITE0.iter().enumerate() {
            for i in 0..args.repeats {
                let stride = if i == 0 { args.stride } else { 1 };
                blocks.push(Block::load(
                    cin,
                    args,
                    stride,
                    vb.pp(format!("blocks.{s}.{i}")),
                )?);
                cin = args.out;
            }
        }
        let head = Pointwise::load(cin, NUM_FEATURES, vb.pp("conv_head"), vb.pp("bn2"))?;
        let classifier = (
            vb.get((1000, NUM_FEATURES), "classifier.weight")?,
            vb.get(1000, "classifier.bias")?,
        );
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
        })
    }

    /// `x` [B,3,H,W] preprocessed → pooled pre-logits [B,1280] (the embedding).
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x, RELU6)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.forward(&x, RELU6, None)?;
        x.flatten(1, 2)?.mean(1)
    }

    /// Pooled [B,1280] → ImageNet-1k logits [B,1000].
    pub fn forward_head(&self, pooled: &Tensor) -> Result<Tensor> {
        let (w, b) = &self.classifier;
        nhwc::linear(pooled, w, b, Epilogue::Bias)
    }
}
