//! Depthwise 2-D convolution (`groups == channels`) with a direct CPU kernel.
//!
//! candle's generic grouped conv2d goes through im2col per group and is several times slower
//! than the whole rest of a ConvNeXt or EfficientNet block on CPU. This kernel walks each
//! (batch, channel) plane once per tap with a contiguous multiply-add along output rows, runs
//! planes in parallel with rayon, and takes explicit asymmetric padding so TensorFlow "SAME"
//! padding needs no extra padded copy. Bias and a clamp (ReLU6) are fused into the same pass,
//! and `channel_bias_clamp` gives 1×1 convs run as matmuls the same epilogue. Other devices
//! and dtypes fall back to candle's conv2d and tensor ops.

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Zero padding on each side of the spatial dims, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad4 {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad4 {
    /// The same padding on all four sides (PyTorch's `padding=p`).
    pub fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// TensorFlow "SAME" padding for an `h`×`w` input: output is `ceil(in / stride)`, and the
    /// odd pixel of padding goes to the bottom/right, as TF (and timm's `Conv2dSame`) do.
    pub fn tf_same(h: usize, w: usize, kh: usize, kw: usize, stride: usize) -> Self {
        fn one(size: usize, k: usize, s: usize) -> (usize, usize) {
            let out = size.div_ceil(s);
            let pad = ((out - 1) * s + k).saturating_sub(size);
            (pad / 2, pad - pad / 2)
        }
        let (top, bottom) = one(h, kh, stride);
        let (left, right) = one(w, kw, stride);
        Self {
            top,
            bottom,
            left,
            right,
        }
    }
}

/// Depthwise conv without bias: `x` [N,C,H,W], `w` [C,1,kh,kw].
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: Pad4) -> Result<Tensor> {
    depthwise_conv2d_bias(x, w, None, stride, pad)
}

/// Depthwise conv with an optional per-channel bias `b` [C], fused into the kernel on CPU.
pub fn depthwise_conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: Pad4,
) -> Result<Tensor> {
    depthwise_conv2d_bias_clamp(x, w, b, stride, pad, None)
}

/// Depthwise conv, optional bias, then an optional clamp `(min, max)` (ReLU6 is `(0, 6)`),
/// all in one pass over the output on CPU: candle's `clamp` alone costs more than the conv.
pub fn depthwise_conv2d_bias_clamp(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: Pad4,
    clamp: Option<(f32, f32)>,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (wc, one, kh, kw) = w.dims4()?;
    if wc != c || one != 1 {
        candle_core::bail!(
            "depthwise_conv2d: weight {:?} does not fit input {:?}",
            w.shape(),
            x.shape()
        )
    }
    if stride == 0 || h + pad.top + pad.bottom < kh || wd + pad.left + pad.right < kw {
        candle_core::bail!("depthwise_conv2d: kernel {kh}x{kw} stride {stride} too large for {h}x{wd} with {pad:?}")
    }
    let fast = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && b.is_none_or(|b| b.dtype() == DType::F32);
    if fast {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let b = match b {
            Some(b) => b.reshape(c)?.contiguous()?,
            None => Tensor::zeros(c, DType::F32, x.device())?,
        };
        return x.apply_op3_no_bwd(&w, &b, &DepthwiseConv2d { stride, pad, clamp });
    }
    let y = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?
        .conv2d(w, 0, stride, 1, c)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, c, 1, 1))?)?,
        None => y,
    };
    match clamp {
        Some((lo, hi)) => y.clamp(lo, hi),
        None => Ok(y),
    }
}

/// `x + b` with `b` [C] broadcast over channel dim 1 of `x` [N, C, ...], then an optional
/// clamp: the epilogue of a conv run as a matmul. On CPU it rewrites `x`'s storage in place
/// (a fresh copy of a large feature map costs more than the arithmetic), so pass only a tensor
/// nobody else holds, such as an op's fresh output.
pub fn channel_bias_clamp(x: Tensor, b: &Tensor, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    let c = x.dim(1)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && b.dtype() == DType::F32 {
        let x = x.contiguous()?;
        x.inplace_op2(&b.reshape(c)?.contiguous()?, &ChannelBiasClamp { clamp })?;
        return Ok(x);
    }
    let mut shape = vec![1usize; x.rank()];
    shape[1] = c;
    let y = x.broadcast_add(&b.reshape(shape)?)?;
    match clamp {
        Some((lo, hi)) => y.clamp(lo, hi),
        None => Ok(y),
    }
}

fn clamp_all(v: &mut [f32], clamp: Option<(f32, f32)>) {
    if let Some((lo, hi)) = clamp {
        v.iter_mut().for_each(|x| *x = x.clamp(lo, hi));
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = match l.contiguous_offsets() {
        Some(o) => o,
        None => candle_core::bail!("depthwise: non-contiguous operand"),
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("depthwise: f32 only"),
    }
}

struct ChannelBiasClamp {
    clamp: Option<(f32, f32)>,
}

impl InplaceOp2 for ChannelBiasClamp {
    fn name(&self) -> &'static str {
        "channel-bias-clamp"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let b = f32_slice(s2, l2)?;
        let dims = l1.shape().dims();
        let (c, inner) = (dims[1], dims[2..].iter().product::<usize>().max(1));
        let (start, end) = match l1.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("channel-bias-clamp: non-contiguous operand"),
        };
        let CpuStorage::F32(x) = s1 else {
            candle_core::bail!("channel-bias-clamp: f32 only")
        };
        x[start..end]
            .par_chunks_mut(inner)
            .enumerate()
            .for_each(|(plane, o)| {
                let bias = b[plane % c];
                o.iter_mut().for_each(|v| *v += bias);
                clamp_all(o, self.clamp);
            });
        Ok(())
    }
}

/// The custom op: input, weight, bias (all contiguous f32).
struct DepthwiseConv2d {
    stride: usize,
    pad: Pad4,
    clamp: Option<(f32, f32)>,
}

impl CustomOp3 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, c, h, wd) = l1.shape().dims4()?;
        let (_, _, kh, kw) = l2.shape().dims4()?;
        let (s, p) = (self.stride, self.pad);
        let oh = (h + p.top + p.bottom - kh) / s + 1;
        let ow = (wd + p.left + p.right - kw) / s + 1;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, o)| {
                let ch = plane % c;
                let geo = Geometry {
                    h,
                    w: wd,
                    kh,
                    kw,
                    oh,
                    ow,
                    stride: s,
                    pad: p,
                };
                let x = &x[plane * h * wd..(plane + 1) * h * wd];
                let k = &w[ch * kh * kw..(ch + 1) * kh * kw];
                plane_conv(x, k, b[ch], &geo, o);
                clamp_all(o, self.clamp);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pad: Pad4,
}

/// One channel plane. Loops run tap-major over whole output rows so that, at stride 1, the
/// innermost loop is a contiguous axpy the compiler vectorises; the valid output range for
/// each tap is computed up front so the inner loop has no bounds branches.
fn plane_conv(x: &[f32], k: &[f32], bias: f32, g: &Geometry, out: &mut [f32]) {
    out.fill(bias);
    let (s, left) = (g.stride, g.pad.left);
    // Valid output columns [lo, hi) for each kernel column, shared by all rows.
    let cols: Vec<(usize, usize)> = (0..g.kw)
        .map(|kx| {
            let lo = if left > kx {
                (left - kx).div_ceil(s)
            } else {
                0
            };
            let hi = if g.w + left > kx {
                ((g.w - 1 + left - kx) / s + 1).min(g.ow)
            } else {
                0
            };
            (lo, hi.max(lo))
        })
        .collect();
    for oy in 0..g.oh {
        let orow = &mut out[oy * g.ow..(oy + 1) * g.ow];
        for ky in 0..g.kh {
            let iy = oy * s + ky;
            if iy < g.pad.top || iy - g.pad.top >= g.h {
                continue;
            }
            let iy = iy - g.pad.top;
            let irow = &x[iy * g.w..(iy + 1) * g.w];
            for (kx, &(lo, hi)) in cols.iter().enumerate() {
                if lo >= hi {
                    continue;
                }
                let wv = k[ky * g.kw + kx];
                // Input column of output column `lo`; never negative by construction of `lo`.
                let start = lo * s + kx - left;
                if s == 1 {
                    let src = &irow[start..start + (hi - lo)];
                    for (o, &v) in orow[lo..hi].iter_mut().zip(src) {
                        *o += wv * v;
                    }
                } else {
                    for (i, o) in orow[lo..hi].iter_mut().enumerate() {
                        *o += wv * irow[start + i * s];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, p: Pad4) -> Result<Tensor> {
        let c = x.dim(1)?;
        x.pad_with_zeros(2, p.top, p.bottom)?
            .pad_with_zeros(3, p.left, p.right)?
            .conv2d(w, 0, stride, 1, c)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    fn check(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, p: Pad4) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let fast = depthwise_conv2d_bias(&x, &wt, Some(&b), stride, p).unwrap();
        let slow = reference(&x, &wt, &b, stride, p).unwrap();
        assert_eq!(fast.dims(), slow.dims(), "k{k} s{stride} {p:?}");
        let diff = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-5, "k{k} s{stride} {p:?}: max abs diff {diff}");
    }

    #[test]
    fn matches_grouped_conv() {
        check(2, 5, 13, 11, 3, 1, Pad4::uniform(1));
        check(2, 5, 13, 11, 3, 2, Pad4::uniform(1));
        check(1, 4, 16, 16, 3, 2, Pad4::tf_same(16, 16, 3, 3, 2));
        check(2, 3, 15, 17, 5, 1, Pad4::uniform(2));
        check(1, 3, 15, 17, 5, 2, Pad4::tf_same(15, 17, 5, 5, 2));
        check(2, 6, 14, 14, 7, 1, Pad4::uniform(3));
        check(1, 2, 9, 10, 3, 1, Pad4::uniform(0));
        let asym = Pad4 {
            top: 0,
            bottom: 2,
            left: 3,
            right: 1,
        };
        check(2, 3, 12, 9, 5, 2, asym);
        check(2, 3, 12, 9, 5, 1, asym);
    }

    #[test]
    fn fused_epilogues_match_tensor_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 4.0, (2, 3, 9, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 1, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let p = Pad4::uniform(1);
        let fused = depthwise_conv2d_bias_clamp(&x, &w, Some(&b), 1, p, Some((0.0, 6.0))).unwrap();
        let plain = reference(&x, &w, &b, 1, p)
            .unwrap()
            .clamp(0f32, 6f32)
            .unwrap();
        let d = (fused - plain)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() <= 1e-5);
        let fused = channel_bias_clamp(x.copy().unwrap(), &b, Some((0.0, 6.0))).unwrap();
        let plain = x
            .broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .clamp(0f32, 6f32)
            .unwrap();
        let d = (fused - plain)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn tf_same_is_asymmetric() {
        assert_eq!(
            Pad4::tf_same(224, 224, 3, 3, 2),
            Pad4 {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        assert_eq!(Pad4::tf_same(112, 112, 5, 5, 1), Pad4::uniform(2));
    }
}
