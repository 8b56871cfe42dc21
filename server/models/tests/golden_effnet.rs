//! EfficientNet-Lite0 against timm: the real weights in `shared/models/`, the two sample photos
//! preprocessed by the reference pipeline, and timm's pre-logits and logits for them.

use kadr_testkit as common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use kadr_models::efficientnet_lite::EfficientNetLite;
use kadr_testkit::shared_dir as shared;

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
