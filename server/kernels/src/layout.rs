//! What every kernel shares and nothing else: convolution padding ([`Pad4`], including
//! TensorFlow "SAME") and access to a CPU operand's contiguous f32 data. A leaf module, so the
//! CPU ([`crate::nhwc`], [`crate::depthwise`]) and CUDA kernels depend on it and not on each
//! other's files.

use candle_core::{CpuStorage, Layout, Result};

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

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: non-contiguous operand"),
    }
}

pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => contiguous(v, l, what),
        _ => candle_core::bail!("{what}: the CPU kernel takes f32"),
    }
}
