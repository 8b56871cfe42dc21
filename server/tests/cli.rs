//! The `kadr` binary end to end on a small split dataset with a tiny real ConvNeXt:
//! index, search, eval (valid against train) and submit, plus clear errors for bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn kadr(home: &Path, weights: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kadr"))
        .env("KADR_HOME", home)
        .env("MODEL", "convnext_test")
        .env("MODEL_PATH", weights)
        .env("MAX_BATCH_SIZE", "3")
        .args(args)
        .output()
        .unwrap()
}

/// AP@10 of a ranked relevance list with `relevant` relevant images in all: Σ precision at
/// each relevant rank / min(relevant, 10), computed here independently of kadr's own.
fn ap_of(ranked: &[bool], relevant: usize) -> f64 {
    let mut hits = 0;
    let mut sum = 0.0;
    for (rank, &rel) in ranked.iter().take(10).enumerate() {
        if rel {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    sum / relevant.min(10) as f64
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn index_search_eval_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let home = tmp.path().join("home");
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data.join("train"), &["red", "green", "blue"], 4);
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        for i in 0..2 {
            common::synthetic_png(&data.join(format!("valid/{name}/v{i}.png")), c, 10 + i);
        }
    }
    for i in 0..3 {
        common::synthetic_png(&data.join(format!("test/t{i}.png")), i, 5);
    }
    let d = data.to_str().unwrap();

    let out = ok(&kadr(&home, &w, &["index", d]));
    assert!(out.contains("21 images, 21 embedded"), "{out}");

    let q = data.join("train/green/1.png");
    let out = ok(&kadr(
        &home,
        &w,
        &["search", "--json", "-k", "3", q.to_str().unwrap()],
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(v["neighbours"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("train/green/1.png"));
    assert_eq!(v["neighbours"].as_array().unwrap().len(), 3);

    // The test images are indexed without a category: as neighbours they are shown but do not
    // vote (as in eval and submit). t0 is its own nearest neighbour.
    let q = data.join("test/t0.png");
    let out = ok(&kadr(
        &home,
        &w,
        &["search", "--json", "-k", "5", q.to_str().unwrap()],
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let hits = v["neighbours"].as_array().unwrap();
    assert_eq!(hits[0]["category"], "", "{v}");
    let labelled = hits.iter().filter(|h| h["category"] != "").count();
    assert_eq!(v["vote"]["voters"].as_u64(), Some(labelled as u64), "{v}");
    assert!(
        v["vote"]["split"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c[0] != ""),
        "an empty category got votes: {v}"
    );
    assert_eq!(v["vote"]["category"], "red", "{v}");

    let out = ok(&kadr(&home, &w, &["eval", "--data", d]));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["mode"], "queries");
    assert_eq!(
        (v["images"].as_u64(), v["queries"].as_u64()),
        (Some(12), Some(6))
    );
    let map = v["map_at_10"].as_f64().unwrap();
    // MAP@10 recomputed here from `kadr search`: each valid image against the train images
    // (4 per category), AP@10 = Σ precision at each relevant rank / min(relevant, 10).
    let mut aps = Vec::new();
    for name in ["red", "green", "blue"] {
        for i in 0..2 {
            let q = data.join(format!("valid/{name}/v{i}.png"));
            let out = ok(&kadr(
                &home,
                &w,
                &["search", "--json", "-k", "21", q.to_str().unwrap()],
            ));
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            let ranked: Vec<bool> = v["neighbours"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["path"].as_str().unwrap().contains("train/"))
                .take(10)
                .map(|h| h["category"] == name)
                .collect();
            assert_eq!(ranked.len(), 10);
            aps.push(ap_of(&ranked, 4));
        }
    }
    let want = aps.iter().sum::<f64>() / aps.len() as f64;
    assert!(
        (map - want).abs() < 1e-6,
        "eval says MAP@10 {map}, the searches give {want} ({aps:?})"
    );
    // The categories differ in colour: far better than chance (0.40 for 3 balanced
    // categories of 4 each).
    assert!(map > 0.8, "MAP@10 {map}");

    // Query expansion: eval's figure is again that of the searches, each valid image
    // expanded by its two best train neighbours and searched among the train images.
    let qe = ["--qe", "2", "--qe-alpha", "1"];
    let out = ok(&kadr(
        &home,
        &w,
        &[&["eval", "--data", d][..], &qe].concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (v["qe"].as_u64(), v["qe_alpha"].as_f64()),
        (Some(2), Some(1.0))
    );
    assert!(out.contains("query expansion: 2 neighbours"), "{out}");
    let map_qe = v["map_at_10"].as_f64().unwrap();
    let mut aps = Vec::new();
    for name in ["red", "green", "blue"] {
        for i in 0..2 {
            let q = data.join(format!("valid/{name}/v{i}.png"));
            let args = [
                &["search", "--json", "-k", "10", "--split", "train"][..],
                &qe,
                &[q.to_str().unwrap()],
            ]
            .concat();
            let v: serde_json::Value =
                serde_json::from_str(ok(&kadr(&home, &w, &args)).trim()).unwrap();
            let ranked: Vec<bool> = v["neighbours"]
                .as_array()
                .unwrap()
                .iter()
                .inspect(|h| assert!(h["path"].as_str().unwrap().contains("train/"), "{v}"))
                .map(|h| h["category"] == name)
                .collect();
            aps.push(ap_of(&ranked, 4));
        }
    }
    let want = aps.iter().sum::<f64>() / aps.len() as f64;
    assert!(
        (map_qe - want).abs() < 1e-6,
        "eval --qe 2 says MAP@10 {map_qe}, the searches give {want} ({aps:?})"
    );
    let out = kadr(&home, &w, &["search", "--qe", "1000", q.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--qe: must be 0 to 100, got 1000"));

    let csv_path = tmp.path().join("sub.csv");
    ok(&kadr(
        &home,
        &w,
        &["submit", "--data", d, "--out", csv_path.to_str().unwrap()],
    ));
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[0].starts_with("image,category,confidence,neighbour_1,score_1"));
    assert!(rows[1].starts_with("test/t0.png,"));
    assert!(rows[1].contains("train/") || rows[1].contains("valid/"));

    // The last `kadr eval` is what the web app's dashboard shows.
    let server = common::server::Server::start(&home, &w, &data, &[]);
    let stats = server.get("/api/v1/stats").json();
    let eval = &stats["eval"];
    assert_eq!(eval["map_at_10"].as_f64(), Some(map_qe), "{stats}");
    assert_eq!(eval["images"].as_u64(), Some(12), "{stats}");
    let mode = eval["mode"].as_str().unwrap();
    assert!(
        mode.contains("query expansion 2") && mode.ends_with("kadr eval"),
        "{mode}"
    );
    assert!(!eval["map"].as_array().unwrap().is_empty(), "{stats}");
    drop(server);

    // A trained head: saved for the space, compared with the vote on valid/.
    let out = ok(&kadr(&home, &w, &["train", "--data", d]));
    let t: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (t["examples"].as_u64(), t["categories"].as_u64()),
        (Some(12), Some(3)),
        "{out}"
    );
    // The categories differ in colour: a linear head separates them.
    assert!(t["valid_accuracy"].as_f64().unwrap() > 0.8, "{out}");
    assert!(t["vote_accuracy"].as_f64().is_some(), "{out}");
    assert!(out.contains("is better here"), "{out}");
    let saved = Path::new(t["path"].as_str().unwrap());
    assert!(saved.is_file() && saved.starts_with(&home), "{out}");
    let out = ok(&kadr(&home, &w, &["eval", "--data", d, "--head"]));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(v["head_accuracy"].as_f64().unwrap() > 0.8, "{out}");
    // The submission now weighs the head against the vote on valid/ and says which it used.
    let out = ok(&kadr(
        &home,
        &w,
        &["submit", "--data", d, "--out", csv_path.to_str().unwrap()],
    ));
    assert!(out.contains("on valid/ the head scores"), "{out}");
    let by_head = out.contains("categories by the head");
    let rows = std::fs::read_to_string(&csv_path).unwrap();
    let confidences: Vec<f64> = rows
        .lines()
        .skip(1)
        .map(|r| r.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(confidences.len(), 3);
    if by_head {
        // Calibrated probabilities, not vote shares (multiples of 1/k).
        assert!(confidences.iter().all(|&c| c > 0.0 && c <= 1.0), "{rows}");
    }
    let out = kadr(&home, &w, &["train", "--data", d, "--steps", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps must be within"));
    // Database-side augmentation is an eval option, checked like query expansion.
    let out = ok(&kadr(&home, &w, &["eval", "--data", d, "--dba", "2"]));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (v["dba"].as_u64(), v["dba_alpha"].as_f64()),
        (Some(2), Some(3.0))
    );
    assert!(out.contains("database augmentation: 2 neighbours"), "{out}");
    let out = kadr(
        &home,
        &w,
        &["eval", "--data", d, "--dba", "2", "--dba-alpha=-1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dba-alpha: must be a number"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let home = tmp.path().join("home");
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "hello").unwrap();

    let out = kadr(&home, &w, &["search", text.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("index is empty"));

    common::synthetic_dataset(&tmp.path().join("one"), &["a", "b"], 2);
    ok(&kadr(
        &home,
        &w,
        &["index", tmp.path().join("one").to_str().unwrap()],
    ));
    let out = kadr(&home, &w, &["search", text.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a supported image"));
    let out = kadr(&home, &w, &["search", "-k", "0", text.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--k must be at least 1"));
    let out = kadr(&home, &w, &["--device", "tpu", "index", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVICE must be cpu, cuda or cuda:N"));
    // A bad variable is an error naming it, its value and what is allowed; never a default.
    for (var, value, allowed) in [
        ("THRESHOLD", "5", "from -1 to 1"),
        ("INDEX_KIND", "annoy", "flat, hnsw, ivf"),
        ("MAX_BATCH_SIZE", "0", "from 1 to 4096"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kadr"))
            .env("KADR_HOME", &home)
            .env(var, value)
            .args(["index", "."])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(var) && err.contains(&format!("'{value}'")) && err.contains(allowed),
            "{var}={value}: {err}"
        );
    }
    // Set but empty means unset, as in a .env file with `VLM=`.
    let out = kadr(
        &home,
        &w,
        &["index", tmp.path().join("one").to_str().unwrap()],
    );
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_kadr"))
        .env("KADR_HOME", &home)
        .env("MODEL", "convnext_test")
        .env("MODEL_PATH", &w)
        .env("THRESHOLD", "")
        .env("VLM", " ")
        .args(["index", tmp.path().join("one").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kadr"))
        .env("KADR_HOME", &home)
        .env("MODEL_PATH", tmp.path().join("missing.safetensors"))
        .args(["index", "."])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such weights file"));
}
