//! Crash safety of indexing: `kadr index` killed with SIGKILL part-way keeps every batch it
//! committed, a restart indexes only the rest, every image ends up indexed exactly once, and
//! search answers exactly as after a clean run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOTAL: usize = 3 * 120;

fn kadr(home: &Path, weights: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kadr"));
    c.env("KADR_HOME", home)
        .env("MODEL", "convnext_test")
        .env("MODEL_PATH", weights)
        .env("MAX_BATCH_SIZE", "2");
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows in the store, read as another process would (WAL lets readers in).
fn stored(home: &Path) -> Option<(usize, usize)> {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("kadr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row(
        "SELECT count(*), count(DISTINCT path) FROM images",
        [],
        |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
    )
    .ok()
}

/// (path, score) of the nearest neighbours, ordered by score then path (ties have no order).
fn neighbours(home: &Path, weights: &Path, query: &Path) -> Vec<(String, f64)> {
    let out = run(kadr(home, weights)
        .args(["search", "--json", "-k", "12"])
        .arg(query));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let mut n: Vec<(String, f64)> = v["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap(),
            )
        })
        .collect();
    n.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    n
}

#[test]
fn kill_9_while_indexing_loses_at_most_a_batch_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green", "blue"], TOTAL / 3);
    let d = data.to_str().unwrap();

    let clean = tmp.path().join("clean");
    let out = run(kadr(&clean, &w).args(["index", d]));
    assert!(
        out.contains(&format!("{TOTAL} images, {TOTAL} embedded")),
        "{out}"
    );

    // Kill the indexer once a few batches are committed.
    let home = tmp.path().join("crashed");
    let mut child = kadr(&home, &w)
        .args(["index", d])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if matches!(stored(&home), Some((n, _)) if n >= 10) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the indexer finished before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (kept, distinct) = stored(&home).unwrap();
    assert!(
        (10..TOTAL).contains(&kept),
        "{kept} of {TOTAL} stored at the kill"
    );
    assert_eq!(kept, distinct);
    assert_eq!(kept % 2, 0, "whole batches of 2 only: {kept}");

    // The restart indexes only what is missing.
    let out = run(kadr(&home, &w).args(["index", d]));
    let rest = TOTAL - kept;
    assert!(
        out.contains(&format!(
            "{TOTAL} images, {rest} embedded, 0 reused, {kept} unchanged, 0 removed (files gone), 0 unreadable; index holds {TOTAL} (faiss flat)"
        )),
        "{out}"
    );
    assert_eq!(stored(&home), Some((TOTAL, TOTAL)));

    // Search is the same as after the clean run.
    for (cat, i) in [("red", 0), ("green", 17), ("blue", 59), ("blue", 119)] {
        let q = data.join(cat).join(format!("{i}.png"));
        let a = neighbours(&clean, &w, &q);
        let b = neighbours(&home, &w, &q);
        assert_eq!(a.len(), 12);
        assert_eq!(
            a.iter().map(|x| &x.0).collect::<Vec<_>>(),
            b.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{cat}/{i}"
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x.1 - y.1).abs() < 1e-5, "{cat}/{i}: {x:?} vs {y:?}");
        }
    }
}

#[test]
fn a_damaged_index_file_is_rebuilt_and_a_damaged_store_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 3);
    let home = tmp.path().join("home");
    run(kadr(&home, &w).args(["index", data.to_str().unwrap()]));
    let q = data.join("red/1.png");
    let before = neighbours(&home, &w, &q);
    let index = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "faiss"))
        .unwrap();

    // Garbage in the index file: rebuilt from the store, same answers.
    std::fs::write(&index, b"not an index").unwrap();
    assert_eq!(neighbours(&home, &w, &q), before);

    // An index of another dimension (another model's file copied over): rebuilt too.
    use kadr_engine::index::VectorIndex;
    let other = kadr_engine::index::FaissIndex::exact(8, &[0.5f32; 48])
        .unwrap()
        .with_path(&index);
    other.persist().unwrap();
    assert_eq!(neighbours(&home, &w, &q), before);

    // A damaged store is not guessed at: the error names it and the way out.
    std::fs::write(home.join("kadr.sqlite"), vec![0x42u8; 8192]).unwrap();
    let _ = std::fs::remove_file(home.join("kadr.sqlite-wal"));
    let out = kadr(&home, &w)
        .args(["search", "--json"])
        .arg(&q)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kadr.sqlite is damaged or not a kadr store") && err.contains("kadr index"),
        "{err}"
    );
}
