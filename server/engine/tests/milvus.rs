//! The Milvus backend against a real Milvus 2.3.5 standalone server (PyPI `milvus`, started by
//! the test on a free port, killed and restarted by it): the same top-10 as FAISS flat, filters
//! applied inside Milvus, deletes, a collection rebuilt and reconciled from the store, and a
//! server killed mid-job losing nothing. Built with `--features kadr-engine/milvus` (the
//! README's test command does); without the feature there is no Milvus backend to test.
#![cfg(feature = "milvus")]

use kadr_testkit as common;

use candle_core::Device;
use common::milvus::MilvusServer;
use common::unit_vectors;
use kadr_engine::embed::Embedder;
use kadr_engine::index::milvus::{MilvusConfig, MilvusIndex};
use kadr_engine::index::{
    Entry, FaissIndex, FaissParams, Filter, IndexConfig, IndexKind, VectorIndex,
};
use kadr_engine::jobs::index_folder;
use kadr_engine::workspace::Workspace;
use std::time::Duration;

fn ids(r: &[Vec<kadr_engine::index::Hit>]) -> Vec<Vec<i64>> {
    r.iter().map(|h| h.iter().map(|x| x.id).collect()).collect()
}

#[test]
fn milvus_flat_matches_faiss_flat_filters_deletes_and_lists_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MilvusServer::start(&tmp.path().join("milvus"));
    let (n, dim) = (2048, 64);
    let v = unit_vectors(n, dim, 42);
    let entries: Vec<Entry> = (0..n as i64)
        .map(|i| Entry {
            id: i + 1,
            split: ["train", "valid", "test"][i as usize % 3].into(),
            category: format!("c{}", i % 7),
        })
        .collect();
    let cfg = MilvusConfig {
        uri: server.uri(),
        kind: IndexKind::Flat,
        nprobe: 32,
        ef_search: 128,
        timeout: Duration::from_secs(60),
    };
    let mut m = MilvusIndex::open(&cfg, "test space", dim).unwrap();
    assert_eq!(m.collection(), "kadr_test_space");
    m.add(&entries, &v).unwrap();
    m.persist().unwrap();
    assert_eq!((m.len(), m.count().unwrap()), (n, n));
    let faiss = FaissIndex::build(FaissParams::exact(), dim, &entries, &v).unwrap();

    let q = &v[..32 * dim];
    for filter in [
        Filter::all(),
        Filter::references(),
        Filter::parse("test", "c1,c2,c3"),
    ] {
        let want = faiss.search(q, 10, &filter).unwrap();
        let got = m.search(q, 10, &filter).unwrap();
        assert_eq!(ids(&got), ids(&want), "{filter:?}");
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (g.score - w.score).abs() < 1e-4,
                "{} vs {}",
                g.score,
                w.score
            );
        }
    }

    // Delete: gone from results and from the count.
    let gone: Vec<i64> = (1..=100).collect();
    assert_eq!(m.remove(&gone).unwrap(), 100);
    assert_eq!(m.count().unwrap(), n - 100);
    let got = m.search(q, 10, &Filter::all()).unwrap();
    assert!(got.iter().flatten().all(|h| h.id > 100));
    let listed = m.ids().unwrap().unwrap();
    assert_eq!(listed, (101..=n as i64).collect::<Vec<_>>());

    // A dimension the collection does not have is refused, naming both.
    let err = MilvusIndex::open(&cfg, "test space", 32).err().unwrap();
    assert!(format!("{err:#}").contains("64-d"), "{err:#}");
}

#[test]
fn workspace_on_milvus_survives_a_server_killed_mid_job_and_reconciles_with_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = MilvusServer::start(&tmp.path().join("milvus"));
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data.join("train"), &["red", "green", "blue", "grey"], 30);
    // Test images unlike any train image: ties between identical vectors have no order.
    for (c, name) in ["red", "green"].iter().enumerate() {
        for i in 0..3 {
            common::synthetic_png(&data.join(format!("test/{name}/{i}.png")), c, 100 + i);
        }
    }
    let home = tmp.path().join("home");
    let embedder = || Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let mut config = IndexConfig::milvus(&server.uri(), IndexKind::Flat);
    // A restart after SIGKILL waits for the old sessions to expire in etcd.
    config.milvus_timeout = Duration::from_secs(600);
    let ws = Workspace::open_configured(&home, embedder(), None, config.clone()).unwrap();

    // Kill the server (SIGKILL) once the job is under way, start it again 3 s later.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let report = std::thread::scope(|s| {
        let job = s.spawn(|| {
            index_folder(&ws, &data, 4, &|done, _| {
                if done == 40 {
                    let _ = tx.send(());
                }
            })
        });
        rx.recv().unwrap();
        server.kill();
        std::thread::sleep(Duration::from_secs(3));
        let t = std::time::Instant::now();
        server.restart();
        eprintln!("Milvus restarted in {:.1} s", t.elapsed().as_secs_f64());
        job.join().unwrap()
    })
    .unwrap()
    .1;
    assert_eq!(report.embedded + report.reused, 126);
    assert_eq!(ws.len(), 126);
    assert!(
        ws.index_description().starts_with("milvus flat"),
        "{}",
        ws.index_description()
    );

    // The same answers as FAISS flat over the same store, filtered or not.
    let faiss = Workspace::open_with(&home, embedder(), IndexKind::Flat).unwrap();
    assert_eq!(faiss.len(), 126);
    let mut queries = Vec::new();
    for (cat, i) in [("red", 0), ("green", 2), ("grey", 29)] {
        let bytes = std::fs::read(data.join(format!("train/{cat}/{i}.png"))).unwrap();
        queries.push(ws.embed_bytes(&bytes).unwrap());
    }
    for q in &queries {
        for filter in [
            Filter::all(),
            Filter::references(),
            Filter::parse("", "green"),
        ] {
            let got = ws.search(q, 10, &filter).unwrap();
            same_ranking(&got, &faiss.search(q, 10, &filter).unwrap());
            assert!(got.iter().all(|g| filter.matches(&g.split, &g.category)));
        }
    }
    let before = ws.search(&queries[0], 10, &Filter::all()).unwrap();

    // Rebuilt from the store: the same again.
    ws.rebuild_index().unwrap();
    same_ranking(
        &ws.search(&queries[0], 10, &Filter::all()).unwrap(),
        &before,
    );
    drop(ws);

    // Rows lost behind kadr's back (or a crash before they reached Milvus): the next open
    // notices the count and puts them back from the store.
    let cfg = MilvusConfig::from(&config);
    let mut direct = MilvusIndex::open(&cfg, faiss.space_id(), queries[0].len()).unwrap();
    let some: Vec<i64> = before.iter().take(5).map(|h| h.id).collect();
    assert_eq!(direct.remove(&some).unwrap(), 5);
    direct.persist().unwrap();
    drop(direct);
    let ws = Workspace::open_configured(&home, embedder(), None, config).unwrap();
    assert_eq!(ws.len(), 126);
    same_ranking(
        &ws.search(&queries[0], 10, &Filter::all()).unwrap(),
        &before,
    );
}

/// The same top hits up to near-ties: Milvus sums inner products in another order than FAISS
/// (and than itself over other segments), so neighbours within 1e-5 may trade places.
fn same_ranking(
    got: &[kadr_engine::workspace::Neighbour],
    want: &[kadr_engine::workspace::Neighbour],
) {
    assert_eq!(got.len(), want.len());
    let last = want.last().map_or(f32::MIN, |h| h.score);
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.score - w.score).abs() < 1e-5,
            "{} vs {}",
            g.score,
            w.score
        );
        assert!(
            want.iter().any(|x| x.path == g.path) || (g.score - last).abs() < 1e-5,
            "{} is not among the expected top hits",
            g.path
        );
    }
}
