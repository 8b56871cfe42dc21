//! Helpers shared by the server's integration tests: the crate-wide test kit and a real
//! `kadr serve` process, and the CLI with the real default weights.
#![allow(dead_code)]

pub mod server;

pub use kadr_testkit::*;

/// The (path, score) of each hit in a JSON list of them (`neighbours` of `kadr search
/// --json`, `hits` of the API), in order.
pub fn path_scores(list: &serde_json::Value) -> Vec<(String, f64)> {
    list.as_array()
        .expect("a list of hits")
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Runs the `kadr` binary with the real EfficientNet-Lite0 weights in workspace `home`,
/// without the caller's model, device or embedding settings.
pub fn kadr_effnet(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kadr"))
        .env("KADR_HOME", home)
        .env("MODEL_PATH", effnet_weights())
        .env_remove("MODEL")
        .env_remove("DEVICE")
        .env_remove("EMBEDDING")
        .args(args)
        .output()
        .unwrap()
}
