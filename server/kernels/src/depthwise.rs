//! The in-place channel bias + clamp epilogue for NCHW outputs (EfficientNet's stem on
//! devices without the channels-last im2col). The depthwise kernels themselves are
//! channels-last, in [`crate::nhwc`].

pub use crate::layout::Pad4;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

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
        let b = crate::layout::f32s(s2, l2, "channel-bias-clamp")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn channel_bias_clamp_matches_tensor_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 4.0, (2, 3, 9, 8), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let fused = channel_bias_clamp(x.copy().unwrap(), &b, Some((0.0, 6.0))).unwrap();
        let plain = x
            .broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .clamp(0f32, 6f32)
            .unwrap();
        assert_eq!(kadr_testkit::max_abs_diff(&fused, &plain), 0.0);
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
