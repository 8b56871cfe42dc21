//! kadr's networks on candle, one file (or folder) a model, with the checkpoints' own key
//! names: the image embedders [`efficientnet_lite`] (EfficientNet-Lite0) and [`convnext`]
//! (timm ConvNeXt v1/v2), both channels-last on `kadr-kernels`; the sentence embedder
//! [`minilm`]; the vision-language model [`vlm`] (Qwen2-VL, with its image processor and chat
//! template); and [`import_pth`], which turns the PyPI EfficientNet-Lite0 `.pth` into
//! timm-named safetensors.
//!
//! Preprocessing, batching, settings and the index live in `kadr-engine`; these files map
//! tensors to tensors (and text to token ids).

pub mod convnext;
pub mod efficientnet_lite;
pub mod import_pth;
pub mod minilm;
pub mod vlm;
