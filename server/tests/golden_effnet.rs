//! EfficientNet-Lite0 against timm: the real weights in `shared/models/`, the two sample photos
//! preprocessed by the reference pipeline, and timm's pre-logits and logits for them.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kadr::models::efficientnet_lite::EfficientNetLite;

/// The shared assets folder: `KADR_SHARED`, else `shared/` beside the repository.
fn shared() -> PathBuf {
    std::env::var_os("KADR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn efficientnet_lite0_matches_timm() {
    let dev = Device::Cpu;
    let weights = shared().join("models/tf_efficientnet_lite0/model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &dev) }.unwrap();
    let model = EfficientNetLite::load(vb).unwrap();
    let golden = candle_core::safetensors::load(
        shared().join("golden/effnet_lite0_check.safetensors"),
        &dev,
    )
    .unwrap();

    let pre_logits = model.forward_features(&golden["input"]).unwrap();
    let logits = model.forward_head(&pre_logits).unwrap();
    let d_pre = max_abs_diff(&pre_logits, &golden["out.pre_logits"]);
    let d_logits = max_abs_diff(&logits, &golden["out.logits"]);
    println!("max abs diff: pre_logits {d_pre:.3e}, logits {d_logits:.3e}");
    assert!(d_pre <= 1e-4, "pre_logits differ by {d_pre}");
    assert!(d_logits <= 1e-4, "logits differ by {d_logits}");

    let top1 = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(top1, [967, 282], "coffee → espresso, chelsea → tiger cat");
}
