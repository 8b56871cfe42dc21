//! The headline figure: `kadr eval` on the Tux Paint 8-category set with the real
//! EfficientNet-Lite0 weights reproduces the reference leave-one-out MAP@10 (0.672) and
//! 10-NN vote accuracy (0.840), and fusing each image's text (all-MiniLM-L6-v2 over its top-5
//! ImageNet labels) at the default weight beats it. Needs `tuxpaint-stamps-default` (Debian),
//! the weights (`KADR_WEIGHTS`, default `models/tf_efficientnet_lite0/model.safetensors`) and
//! the text model (`KADR_TEXT_MODEL`, default `models/all-minilm-l6-v2`); setup.sh provides
//! all three.

mod common;

use common::{effnet_weights, minilm_dir};
use std::path::PathBuf;
use std::process::Command;

fn kadr(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kadr"));
    c.env("KADR_HOME", home)
        .env("MODEL_PATH", effnet_weights())
        .env("TEXT_MODEL_PATH", minilm_dir())
        .env_remove("MODEL")
        .env_remove("DEVICE")
        .env_remove("EMBEDDING")
        .env_remove("FUSION_WEIGHT");
    c
}

/// Builds the Tux Paint set under `dir`.
fn tuxpaint(dir: &std::path::Path) -> PathBuf {
    let data = dir.join("tux");
    let out = kadr(dir)
        .args(["make-dataset", "tuxpaint", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// Runs `kadr` and parses the JSON its last line prints.
fn last_json(cmd: &mut Command) -> (serde_json::Value, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("kadr prints something");
    (
        serde_json::from_str(last).expect("last line is JSON"),
        stdout,
    )
}

#[test]
fn tuxpaint_leave_one_out_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tuxpaint(tmp.path());

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
fn fused_text_beats_visual_on_tuxpaint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tuxpaint(tmp.path());
    let home = tmp.path().join("home");

    let (v, table) = last_json(kadr(&home).args(["eval", "--fusion", "--data"]).arg(&data));
    println!("{table}");
    assert_eq!(v["images"].as_u64(), Some(275));
    let visual = v["visual"]["map_at_10"].as_f64().unwrap();
    assert!((visual - 0.672).abs() <= 0.01, "visual MAP@10 {visual}");
    let default = kadr_engine::settings::DEFAULT_FUSION_WEIGHT as f64;
    assert!((v["fusion_weight"].as_f64().unwrap() - default).abs() < 1e-6);
    let at = |w: f64| {
        v["fused"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| (f["weight"].as_f64().unwrap() - w).abs() < 1e-6)
            .unwrap_or_else(|| panic!("no fused figures at w={w}: {v}"))
            .clone()
    };
    let fused = at(default)["map_at_10"].as_f64().unwrap();
    assert!(
        fused > visual,
        "fused MAP@10 {fused} at w={default} does not beat visual {visual}"
    );

    // The fused space as the workspace indexes and reads it gives the sweep's figures.
    let (f, _) = last_json(
        kadr(&home)
            .env("EMBEDDING", "fused")
            .args(["eval", "--data"])
            .arg(&data),
    );
    assert!(
        (f["map_at_10"].as_f64().unwrap() - fused).abs() < 1e-9,
        "{f}"
    );
    assert!(
        (f["vote_accuracy"].as_f64().unwrap() - at(default)["vote_accuracy"].as_f64().unwrap())
            .abs()
            < 1e-9
    );
    assert!(
        f["model"]
            .as_str()
            .unwrap()
            .starts_with("fused(tf_efficientnet_lite0@"),
        "{f}"
    );
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
