//! The workspace end to end with a real (tiny) ConvNeXt, real FAISS and real SQLite:
//! incremental indexing, reopening, replacing, removing, and recovery from a stale index.

mod common;

use candle_core::Device;
use kadr::dataset::scan;
use kadr::embed::Embedder;
use kadr::index::IndexKind;
use kadr::workspace::Workspace;
use std::path::Path;

fn open(home: &Path, weights: &Path, kind: IndexKind) -> Workspace {
    let e = Embedder::load("convnext_test", weights, Device::Cpu, 4).unwrap();
    Workspace::open_with(home, e, kind).unwrap()
}

#[test]
fn index_search_reopen_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 4);
    std::fs::write(data.join("red/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let home = tmp.path().join("home");
    let files = scan(&data).unwrap();
    assert_eq!(files.len(), 13);

    let mut ws = open(&home, &weights, IndexKind::Flat);
    let r = ws.index_files(&files, 5, &|_| {}).unwrap();
    assert_eq!(
        (r.embedded, r.reused, r.skipped, r.failed.len()),
        (12, 0, 0, 1)
    );
    assert!(r.failed[0].0.ends_with("broken.png"));
    assert_eq!(ws.len(), 12);

    let q_path = data.join("green/2.png");
    let q = ws.embed_bytes(&std::fs::read(&q_path).unwrap()).unwrap();
    let hits = ws.search(&q, 5).unwrap();
    assert!(hits[0].path.ends_with("green/2.png"));
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert_eq!(hits[0].category, "green");
    drop(ws);

    // Reopening gives identical results, and nothing is embedded twice.
    let mut ws = open(&home, &weights, IndexKind::Flat);
    assert_eq!(ws.search(&q, 5).unwrap(), hits);
    let r = ws.index_files(&files, 5, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.skipped), (0, 12));

    // Same content at a new path reuses the embedding; a changed file replaces its row.
    std::fs::copy(&q_path, data.join("green/copy.png")).unwrap();
    common::synthetic_png(&data.join("red/0.png"), 2, 9);
    let r = ws.index_files(&scan(&data).unwrap(), 5, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.reused, r.skipped), (1, 1, 11));
    assert_eq!(ws.len(), 13);
    assert_eq!(
        ws.remove_paths(&[data
            .join("green/copy.png")
            .canonicalize()
            .unwrap()
            .to_string_lossy()
            .into()])
            .unwrap(),
        1
    );
    assert_eq!(ws.len(), 12);
    let after = ws.search(&q, 5).unwrap();
    drop(ws);

    // A damaged index file is rebuilt from the store with the same results.
    for f in std::fs::read_dir(&home).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "faiss") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    let mut ws = open(&home, &weights, IndexKind::Flat);
    assert_eq!(ws.len(), 12);
    assert_eq!(ws.search(&q, 5).unwrap(), after);

    // An approximate index over the same store finds the exact match too.
    let mut hnsw = open(&home, &weights, IndexKind::Hnsw);
    assert_eq!(hnsw.len(), 12);
    assert_eq!(hnsw.search(&q, 1).unwrap()[0].path, after[0].path);
}
