//! The trained head and query expansion in the web API, against the CLI on the same store:
//! the Tux Paint stamps split into train/ valid/ test/ with the real EfficientNet-Lite0
//! weights, `kadr train`, then a real `kadr serve` over the same workspace. An analysis
//! carries the head's guess; `qe` searches the expanded query exactly as `kadr search --qe`
//! does; the "best" category source picks what the CLI's figures on valid/ say; the
//! submission's categories follow the source and say which in a header; bad values are 422s
//! naming the field. Needs `tuxpaint-stamps-default` and the weights (setup.sh).

mod common;

use common::effnet_weights;
use common::kadr_effnet as kadr;
use common::server::Server;
use std::path::{Path, PathBuf};

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    let stdout = ok(out);
    serde_json::from_str(stdout.lines().last().unwrap()).expect("the last line is JSON")
}

/// The Tux Paint set with every fifth stamp of a category in valid/ and every tenth (offset)
/// in test/ (unlabelled), the rest in train/; the test images, in order.
fn split_set(tmp: &Path) -> (PathBuf, Vec<PathBuf>) {
    let flat = tmp.join("flat");
    ok(&kadr(
        tmp,
        &["make-dataset", "tuxpaint", "--out", flat.to_str().unwrap()],
    ));
    let set = tmp.join("set");
    let mut tests = Vec::new();
    let mut categories: Vec<_> = std::fs::read_dir(&flat)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    categories.sort();
    for c in categories {
        let name = c.file_name().unwrap().to_owned();
        let mut files = Vec::new();
        walk(&c, &mut files);
        files.sort();
        for (i, f) in files.iter().enumerate() {
            let rel = f.strip_prefix(&c).unwrap();
            let to = if i % 10 == 3 {
                let t = set.join("test").join(format!(
                    "{}-{}",
                    name.to_string_lossy(),
                    rel.to_string_lossy().replace('/', "-")
                ));
                tests.push(t.clone());
                t
            } else {
                let split = if i % 5 == 4 { "valid" } else { "train" };
                set.join(split).join(&name).join(rel)
            };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(f, &to).unwrap();
        }
    }
    (set, tests)
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn scores(hits: &serde_json::Value) -> Vec<f64> {
    hits.as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect()
}

#[test]
fn head_and_query_expansion_in_the_api_agree_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (set, tests) = split_set(tmp.path());
    let set_arg = set.to_str().unwrap();
    let trained = last_json(&kadr(&home, &["train", "--data", set_arg]));
    let head_valid = trained["valid_accuracy"].as_f64().unwrap();
    let vote_valid = trained["vote_accuracy"].as_f64().unwrap();
    assert!(head_valid > 0.6 && vote_valid > 0.6, "{trained}");
    // What the CLI finds for one test image with the query expanded.
    let query = &tests[0];
    let searched = ok(&kadr(
        &home,
        &[
            "search",
            "--json",
            "-k",
            "10",
            "--qe",
            "2",
            query.to_str().unwrap(),
        ],
    ));
    let cli: serde_json::Value = serde_json::from_str(searched.lines().last().unwrap()).unwrap();
    // ... and with the indexed images augmented by their 2 nearest others.
    let augmented = ok(&kadr(
        &home,
        &[
            "search",
            "--json",
            "-k",
            "10",
            "--dba",
            "2",
            "--dba-alpha",
            "1",
            query.to_str().unwrap(),
        ],
    ));
    let cli_dba: serde_json::Value =
        serde_json::from_str(augmented.lines().last().unwrap()).unwrap();

    let server = Server::start(
        &home,
        &effnet_weights(),
        &set,
        &[("MODEL", "tf_efficientnet_lite0"), ("THRESHOLD", "0")],
    );
    let bytes = std::fs::read(query).unwrap();
    let name = query.file_name().unwrap().to_str().unwrap();
    let up = server.upload(&[(name, &bytes)], &[]);
    assert_eq!(up.status, 200, "{}", up.text());
    let analysis = up.json()[0]["analysis"].clone();
    let hash = analysis["hash"].as_str().unwrap().to_string();

    // The head's guess: the top categories, ordered, probabilities that are probabilities.
    let head = &analysis["head"];
    let top = head["top"].as_array().unwrap();
    assert_eq!(top.len(), 3, "{head}");
    assert_eq!(top[0]["label"], head["category"]);
    let p: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert!(
        p.windows(2).all(|w| w[0] >= w[1]) && p[0] <= 1.0 && p.iter().sum::<f64>() <= 1.0 + 1e-5,
        "{head}"
    );
    assert_eq!(analysis["expansion"]["n"], 0);

    // qe=2: the CLI's expanded search, rank for rank (scores equal up to the forward pass
    // of another batch size), and not the plain search.
    let expanded = server.get(&format!("/api/v1/analysis?hash={hash}&qe=2&qa=3"));
    assert_eq!(expanded.status, 200, "{}", expanded.text());
    let expanded = expanded.json();
    assert_eq!(expanded["expansion"]["n"], 2);
    let web: Vec<f64> = scores(&expanded["hits"]).into_iter().take(10).collect();
    let want = scores(&cli["neighbours"]);
    assert_eq!(web.len(), want.len());
    for (w, c) in web.iter().zip(&want) {
        assert!((w - c).abs() < 1e-3, "web {web:?}\ncli {want:?}");
    }
    let plain = scores(&analysis["hits"]);
    assert!(
        plain.iter().zip(&web).any(|(a, b)| (a - b).abs() > 1e-3),
        "the expansion changed nothing: {plain:?}"
    );
    // dba=2: the CLI's search against the augmented images, and not the plain search.
    let dba = server.get(&format!("/api/v1/analysis?hash={hash}&dba=2&da=1"));
    assert_eq!(dba.status, 200, "{}", dba.text());
    let dba = dba.json();
    assert_eq!(
        (&dba["augmentation"]["n"], &dba["expansion"]["n"]),
        (&2.into(), &0.into())
    );
    let web: Vec<f64> = scores(&dba["hits"]).into_iter().take(10).collect();
    let want = scores(&cli_dba["neighbours"]);
    assert_eq!(web.len(), want.len());
    for (w, c) in web.iter().zip(&want) {
        assert!((w - c).abs() < 1e-3, "web {web:?}\ncli {want:?}");
    }
    assert!(
        plain.iter().zip(&web).any(|(a, b)| (a - b).abs() > 1e-3),
        "the augmentation changed nothing: {plain:?}"
    );

    // "best": the more accurate on valid/ by the CLI's own figures (k 10, every neighbour
    // voting, as `kadr train` counts them).
    let choice = server.get("/api/v1/choice?t=0&k=10").json();
    assert_eq!(choice["head"], true, "{choice}");
    assert!(
        (choice["head_accuracy"].as_f64().unwrap() - head_valid).abs() < 1e-9,
        "{choice} vs {trained}"
    );
    assert!(
        (choice["vote_accuracy"].as_f64().unwrap() - vote_valid).abs() < 1e-9,
        "{choice} vs {trained}"
    );
    let best = if head_valid > vote_valid {
        "head"
    } else {
        "vote"
    };
    assert_eq!(choice["by"], best, "{choice}");

    // The submission: categories by the source asked for, and which, in a header.
    let sub = |by: &str| {
        let r = server.get(&format!(
            "/api/v1/submission.csv?hashes={hash}&t=0{}",
            if by.is_empty() {
                String::new()
            } else {
                format!("&by={by}")
            }
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let row: Vec<String> = text
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(String::from)
            .collect();
        (
            r.header("x-kadr-category-by").unwrap().to_string(),
            row[1].clone(),
        )
    };
    assert_eq!(
        sub("head"),
        ("head".into(), head["category"].as_str().unwrap().into())
    );
    let (by, _) = sub("vote");
    assert_eq!(by, "vote");
    assert_eq!(sub("").0, best);
    let export = server.get(&format!("/api/v1/export.csv?hashes={hash}&by=head&qe=2"));
    assert_eq!(export.status, 200, "{}", export.text());
    assert!(export
        .text()
        .lines()
        .next()
        .unwrap()
        .ends_with("category_by,head_category,head_probability"));

    // Bad values name their field.
    for (path, field) in [
        (format!("/api/v1/analysis?hash={hash}&qe=1000"), "qe"),
        (format!("/api/v1/analysis?hash={hash}&qe=2&qa=-1"), "qa"),
        (format!("/api/v1/analysis?hash={hash}&dba=1000"), "dba"),
        (format!("/api/v1/analysis?hash={hash}&dba=2&da=-1"), "da"),
        ("/api/v1/stats?dba=1000".to_string(), "dba"),
        (format!("/api/v1/export.csv?hashes={hash}&by=oracle"), "by"),
        (
            format!("/api/v1/submission.csv?hashes={hash}&qe=many"),
            "qe",
        ),
        ("/api/v1/stats?by=oracle".to_string(), "by"),
        ("/api/v1/choice?mode=loudest".to_string(), "mode"),
    ] {
        let r = server.get(&path);
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{path}: {}", r.text());
    }
}
