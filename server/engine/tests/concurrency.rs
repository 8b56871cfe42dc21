//! The engine shared by many threads, with a tiny real ConvNeXt, FAISS and SQLite: the
//! dynamic batcher gathers concurrent requests into one forward pass and answers each with
//! the embedding it would get alone; a search is answered while an index job is half-way.

use kadr_testkit as common;

use candle_core::Device;
use kadr_engine::batcher::{BatchConfig, Batcher};
use kadr_engine::dataset::scan;
use kadr_engine::embed::{Embedder, TopClasses};
use kadr_engine::index::{Filter, IndexKind};
use kadr_engine::preprocess::preprocess;
use kadr_engine::workspace::Workspace;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

fn pixels(embedder: &Embedder, n: usize) -> Vec<Vec<f32>> {
    let tmp = tempfile::tempdir().unwrap();
    (0..n)
        .map(|i| {
            let p = tmp.path().join(format!("{i}.png"));
            common::synthetic_png(&p, i % 3, i);
            let img = image::open(&p).unwrap().to_rgb8();
            preprocess(&img, &embedder.preprocess_spec())
        })
        .collect()
}

#[test]
fn concurrent_requests_share_a_pass_and_get_their_own_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let embedder = Arc::new(Embedder::load("convnext_test", &weights, Device::Cpu, 16).unwrap());
    let n = 8;
    let inputs = pixels(&embedder, n);
    // Each image alone, as the reference.
    let alone: Vec<(Vec<f32>, TopClasses)> = inputs
        .iter()
        .map(|d| embedder.embed_with_top(d, 1, 3).unwrap().remove(0))
        .collect();

    // One worker and a long wait: all eight requests, announced before any is sent, are in
    // the first pass.
    let batcher = Batcher::new(
        embedder.clone(),
        BatchConfig {
            workers: 1,
            max_batch: 16,
            wait: Duration::from_millis(2000),
            enabled: true,
        },
    );
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = inputs
        .into_iter()
        .map(|d| {
            let (b, start) = (batcher.clone(), start.clone());
            let ticket = b.announce();
            std::thread::spawn(move || {
                start.wait();
                ticket.embed(d, 3).unwrap()
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        batcher.mean_batch_size(),
        n as f64,
        "one pass for all requests"
    );
    for ((v, top), (v1, top1)) in answers.iter().zip(&alone) {
        let d = v
            .iter()
            .zip(v1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-5,
            "batched embedding differs from the single one by {d}"
        );
        assert_eq!(top.len(), 3);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            top1.iter().map(|t| t.0).collect::<Vec<_>>()
        );
    }

    // Batching off: every request is its own pass.
    let single = Batcher::new(
        embedder.clone(),
        BatchConfig {
            workers: 2,
            max_batch: 16,
            wait: Duration::from_millis(2000),
            enabled: false,
        },
    );
    let ins = pixels(&embedder, 4);
    let hs: Vec<_> = ins
        .into_iter()
        .map(|d| {
            let b = single.clone();
            std::thread::spawn(move || b.embed(d, 0).unwrap())
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(single.mean_batch_size(), 1.0);

    // Nothing announced: a lone request does not wait for company (the wait is 2 s).
    let t = std::time::Instant::now();
    let one = batcher.embed(pixels(&embedder, 1).remove(0), 0).unwrap();
    assert_eq!(one.0.len(), alone[0].0.len());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // An announcement withdrawn (a file that did not decode) does not hold the pass either.
    let withdrawn = batcher.announce();
    let t = std::time::Instant::now();
    let b2 = batcher.clone();
    let d = pixels(&embedder, 1).remove(0);
    let h = std::thread::spawn(move || b2.embed(d, 0).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    drop(withdrawn);
    h.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // An error of the pass reaches its members.
    let e = batcher.embed(vec![0.0; 7], 0).unwrap_err();
    assert!(format!("{e:#}").contains("wrong length"), "{e:#}");
}

#[test]
fn search_is_answered_while_an_index_job_is_half_way() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 4);
    let home = tmp.path().join("home");
    let e = Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let ws = Arc::new(Workspace::open_with(&home, e, IndexKind::Flat).unwrap());
    let files = scan(&data).unwrap();
    // Index the first batch, so there is something to find.
    ws.index_files(&files[..3], 3, &|_| {}).unwrap();
    let q = ws
        .embed_bytes(&std::fs::read(&files[0].path).unwrap())
        .unwrap();

    // The rest in a job whose progress callback (called with the job mid-way, holding the
    // writer's lock) waits until a search from another thread has been answered.
    let (answered_tx, answered_rx) = mpsc::channel::<usize>();
    let (searcher, job) = {
        let (ws2, q) = (ws.clone(), q.clone());
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let searcher = std::thread::spawn(move || {
            go_rx.recv().unwrap();
            let hits = ws2.search(&q, 3, &Filter::all()).unwrap();
            answered_tx.send(hits.len()).unwrap();
            ws2.len()
        });
        let ws3 = ws.clone();
        let rest = files[3..].to_vec();
        let job = std::thread::spawn(move || {
            let first = std::cell::Cell::new(true);
            ws3.index_files(&rest, 3, &|_| {
                if first.replace(false) {
                    go_tx.send(()).unwrap();
                    let n = answered_rx
                        .recv_timeout(Duration::from_secs(60))
                        .expect("a search waited for the index job");
                    assert_eq!(n, 3);
                }
            })
            .unwrap()
        });
        (searcher, job)
    };
    let len_mid_job = searcher.join().unwrap();
    let r = job
        .join()
        .expect("the index job panicked: the search did not get through");
    assert_eq!(r.embedded, 9);
    // The search saw the first batch of the job already (vectors added as they come).
    assert!((6..=12).contains(&len_mid_job), "{len_mid_job}");
    assert_eq!(ws.len(), 12);
}
