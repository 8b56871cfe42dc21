//! kadr's tensor kernels on candle, for the channels-last backbones in `kadr-models`: every
//! 1×1 conv / MLP layer as one matmul with a fused epilogue (bias, exact-erf GELU, ReLU6,
//! residual), depthwise convolutions vectorised across channels, im2col and patchify
//! ([`nhwc`]); the NCHW channel bias + clamp ([`depthwise`]); the CUDA launchers of
//! `kadr_ops.cu` (`cuda`, feature `cuda`). [`layout`] holds what they share.
//!
//! Only tensors in, tensors out: no model files, no configuration. This crate is built at
//! opt-level 3 even in test builds, because every test that embeds runs it.

pub mod depthwise;
pub mod layout;
pub mod nhwc;

/// CUDA kernels for the channels-last ops (`kadr_ops.cu`).
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
