//! ConvNeXt against timm on tiny random-weight models, one per block kind (linear MLP as in
//! tiny…xlarge, conv MLP as in atto…nano), with the config read from the weights alone.

use kadr_testkit as common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use kadr_models::convnext::{Config, ConvNeXt};
use kadr_testkit::shared_dir as shared;

fn check(name: &str, conv_mlp: bool) {
    let dev = Device::Cpu;
    let path = shared().join(format!("golden/{name}.safetensors"));
    let golden = candle_core::safetensors::load(&path, &dev).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev) }.unwrap();
    let vb = vb.pp("weights");

    let cfg = Config::from_weights(&vb).unwrap();
    assert_eq!(
        cfg,
        Config {
            depths: vec![1, 1, 2, 1],
            dims: vec![16, 32, 64, 128],
            conv_mlp
        }
    );
    let model = ConvNeXt::load(&cfg, vb).unwrap();

    let pre_logits = model.forward_pre_logits(&golden["input"]).unwrap();
    let logits = model.forward_head(&pre_logits).unwrap();
    let d_pre = max_abs_diff(&pre_logits, &golden["out.pre_logits"]);
    let d_logits = max_abs_diff(&logits, &golden["out.logits"]);
    println!("{name}: max abs diff pre_logits {d_pre:.3e}, logits {d_logits:.3e}");
    assert!(d_pre <= 1e-4, "{name}: pre_logits differ by {d_pre}");
    assert!(d_logits <= 1e-4, "{name}: logits differ by {d_logits}");
}

#[test]
fn convnext_linear_mlp_matches_timm() {
    check("convnext_linear_mlp", false);
}

#[test]
fn convnext_conv_mlp_matches_timm() {
    check("convnext_conv_mlp", true);
}

#[test]
fn presets_are_timm_sizes() {
    assert_eq!(Config::atto().dims, [40, 80, 160, 320]);
    assert_eq!(Config::nano().depths, [2, 2, 8, 2]);
    assert_eq!(Config::tiny().depths, [3, 3, 9, 3]);
    assert_eq!(Config::xlarge().dims, [256, 512, 1024, 2048]);
    assert!(Config::pico().conv_mlp && !Config::small().conv_mlp);
}
