//! The headline figure: `kadr eval` on the Tux Paint 8-category set with the real
//! EfficientNet-Lite0 weights reproduces the reference leave-one-out MAP@10 (0.672) and
//! 10-NN vote accuracy (0.840). Needs `tuxpaint-stamps-default` (Debian) and the weights
//! (`KADR_WEIGHTS`, default `models/tf_efficientnet_lite0/model.safetensors`); setup.sh
//! provides both.

use std::path::PathBuf;
use std::process::Command;

fn weights() -> PathBuf {
    std::env::var_os("KADR_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/tf_efficientnet_lite0/model.safetensors")
        })
}

fn kadr(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kadr"));
    c.env("KADR_HOME", home)
        .env("MODEL_PATH", weights())
        .env_remove("MODEL")
        .env_remove("DEVICE");
    c
}

#[test]
fn tuxpaint_leave_one_out_matches_reference() {
    let w = weights();
    assert!(w.is_file(), "{} missing: run scripts/setup.sh", w.display());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tux");
    let out = kadr(tmp.path())
        .args(["make-dataset", "tuxpaint", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let home = tmp.path().join("home");
    let out = kadr(&home)
        .args(["eval", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("eval prints something");
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    let map = v["map_at_10"].as_f64().unwrap();
    let acc = v["vote_accuracy"].as_f64().unwrap();
    assert_eq!(v["images"].as_u64(), Some(275));
    assert!((map - 0.672).abs() <= 0.01, "MAP@10 {map}");
    assert!((acc - 0.84).abs() <= 0.02, "vote accuracy {acc}");

    // A second run embeds nothing and gives the same figures.
    let again = kadr(&home)
        .args(["eval", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let last2 = String::from_utf8_lossy(&again.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(last, last2);
}

#[test]
fn eval_of_a_missing_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kadr(tmp.path())
        .args(["eval", "--data", "/nonexistent/folder"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a folder"), "{err}");
}
