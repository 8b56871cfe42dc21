//! Vector index at scale: build time, memory, query latency (one query, and batches of 100) and
//! recall@10 against exact search, for FAISS flat / HNSW / IVF / IVF-PQ (kadr's own
//! `FaissIndex`, trained as the workspace trains it) and, with `--features milvus`, Milvus HNSW /
//! IVF over the same vectors. Run by `bench/index_scale.sh`.
//!
//! Data: `N` (default 1,000,000) synthetic 1280-d vectors in 1,000 Gaussian clusters,
//! L2-normalised (image embeddings are clustered by content, not uniform); queries are fresh
//! points of random clusters. IVF-PQ is also measured as the workspace searches it: `RERANK` ×
//! 10 candidates re-scored against the vectors in a real kadr store (SQLite on disk, written
//! by the bench first). Env: N, DIM, QUERIES (recall set, default 1000), KINDS (FAISS
//! kinds to measure, default `hnsw,ivf,ivfpq`; exact flat is always built for the truth),
//! MILVUS (`off` skips Milvus), MILVUS_URI (an existing server or cluster to measure instead).
//!
//! Without MILVUS_URI each Milvus kind gets a fresh real server (`scripts/milvus_server.py`)
//! with its own data folder, removed after it: Milvus keeps a dropped collection's log and
//! binlogs for hours, and at a million 1280-d vectors two kinds on one server need more than
//! 40 GB of disk.

use anyhow::Result;
use kadr_engine::index::{
    rerank as rerank_hits, Entry, FaissIndex, FaissParams, Filter, Hit, IndexKind, VectorIndex,
    DEFAULT_RERANK,
};
use kadr_engine::store::{NewImage, Store};
use std::time::Instant;

const CLUSTERS: usize = 1000;
const K: usize = 10;
/// The model id the bench's store rows carry.
const MODEL: &str = "index_scale";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (splitmix64) and a standard normal from it.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// `n` points (from index `start`) around the cluster centres, noise σ per dimension.
fn points(centres: &[f32], dim: usize, start: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n * dim];
    out.chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut r = Rng(seed ^ ((start + i) as u64).wrapping_mul(0x2545F4914F6CDD1D));
        let c = (r.next() as usize) % CLUSTERS;
        let sigma = 0.6 / (dim as f32).sqrt();
        for (x, m) in row.iter_mut().zip(&centres[c * dim..(c + 1) * dim]) {
            *x = m + sigma * r.normal();
        }
        normalise(row);
    });
    out
}

/// Peak resident memory of this process since the last reset, in MiB; resets it.
fn peak_rss_mib(reset: bool) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if reset {
        // Linux: writing 5 resets the peak to the current resident size.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    kb / 1024.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn recall(got: &[Vec<Hit>], truth: &[Vec<Hit>]) -> f64 {
    let mut hit = 0;
    for (g, t) in got.iter().zip(truth) {
        hit += g.iter().filter(|h| t.iter().any(|x| x.id == h.id)).count();
    }
    hit as f64 / (truth.len() * K) as f64
}

/// Latency of single queries and of batches of 100, and recall@10 over all queries.
fn measure(
    index: &dyn VectorIndex,
    queries: &[f32],
    dim: usize,
    truth: &[Vec<Hit>],
) -> Result<String> {
    let all = Filter::all();
    measure_with(&|q| index.search(q, K, &all), queries, dim, truth)
}

/// Queries (row-major) → the top 10 of each.
type Search<'a> = dyn Fn(&[f32]) -> Result<Vec<Vec<Hit>>> + 'a;

/// [`measure`] of any search.
fn measure_with(
    search: &Search,
    queries: &[f32],
    dim: usize,
    truth: &[Vec<Hit>],
) -> Result<String> {
    let nq = queries.len() / dim;
    let singles = nq.min(300);
    let mut one = Vec::with_capacity(singles);
    for q in queries.chunks(dim).take(singles) {
        let t = Instant::now();
        search(q)?;
        one.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut batch = Vec::new();
    for b in queries.chunks(100 * dim).take(10) {
        let t = Instant::now();
        search(b)?;
        batch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let got = search(queries)?;
    Ok(format!(
        "1 query p50 {:.2} ms p99 {:.2} ms | 100 queries p50 {:.1} ms p99 {:.1} ms | recall@10 {:.4}",
        percentile(one.clone(), 0.5),
        percentile(one, 0.99),
        percentile(batch.clone(), 0.5),
        percentile(batch, 0.99),
        recall(&got, truth)
    ))
}

/// The vectors in a real kadr store (SQLite, on disk), as the workspace keeps them: where
/// IVF-PQ's candidates are re-scored from.
fn bench_store(entries: &[Entry], data: &[f32], dim: usize) -> Result<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("kadr.sqlite"))?;
    let t = Instant::now();
    for (e, d) in entries.chunks(4096).zip(data.chunks(4096 * dim)) {
        let rows: Vec<NewImage> = e
            .iter()
            .zip(d.chunks(dim))
            .map(|(e, v)| NewImage {
                path: format!("img/{}.jpg", e.id),
                hash: format!("{:016x}", e.id),
                split: e.split.clone(),
                category: e.category.clone(),
                width: 1,
                height: 1,
                embedding: v.to_vec(),
                labels: None,
            })
            .collect();
        let (ids, _) = store.insert_batch(MODEL, &rows)?;
        anyhow::ensure!(
            ids.iter().zip(e).all(|(a, b)| *a == b.id),
            "store ids differ from the entries'"
        );
    }
    println!(
        "store: {} vectors written to SQLite in {:.1} s",
        entries.len(),
        t.elapsed().as_secs_f64()
    );
    Ok((dir, store))
}

/// IVF-PQ searched for `RERANK` × 10 candidates per query, re-scored from the store, as the
/// workspace does.
fn measure_reranked(
    index: &dyn VectorIndex,
    store: &Store,
    rerank: usize,
    queries: &[f32],
    dim: usize,
    truth: &[Vec<Hit>],
) -> Result<String> {
    let all = Filter::all();
    let search = |q: &[f32]| -> Result<Vec<Vec<Hit>>> {
        let candidates = index.search(q, K * rerank, &all)?;
        q.chunks(dim)
            .zip(&candidates)
            .map(|(q, c)| rerank_hits(q, c, K, |ids| store.vectors_of(MODEL, ids)))
            .collect()
    };
    measure_with(&search, queries, dim, truth)
}

fn main() -> Result<()> {
    let n = env("N", 1_000_000);
    let dim = env("DIM", 1280);
    let nq = env("QUERIES", 1000);
    println!(
        "index_scale: {n} vectors × {dim}-d ({CLUSTERS} clusters), {nq} queries, k={K}, {} threads",
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );
    let mut r = Rng(7);
    let mut centres: Vec<f32> = (0..CLUSTERS * dim).map(|_| r.normal()).collect();
    centres.chunks_mut(dim).for_each(normalise);
    let t = Instant::now();
    let data = points(&centres, dim, 0, n, 1);
    let queries = points(&centres, dim, 0, nq, 2);
    let entries: Vec<Entry> = (0..n as i64)
        .map(|id| Entry {
            id: id + 1,
            split: String::new(),
            category: String::new(),
        })
        .collect();
    println!(
        "data: {:.1} s, {:.0} MiB of vectors",
        t.elapsed().as_secs_f64(),
        (n * dim * 4) as f64 / (1 << 20) as f64
    );

    let kinds: Vec<IndexKind> = std::iter::once(Ok(IndexKind::Flat))
        .chain(
            std::env::var("KINDS")
                .unwrap_or_else(|_| "hnsw,ivf,ivfpq".into())
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty() && *k != "flat")
                .map(str::parse::<IndexKind>),
        )
        .collect::<Result<_>>()?;
    // IVF-PQ is re-ranked from the stored vectors, so the store is written first.
    let store = if kinds.contains(&IndexKind::IvfPq) {
        Some(bench_store(&entries, &data, dim)?)
    } else {
        None
    };
    let mut truth = Vec::new();
    for kind in kinds {
        let base = rss_mib();
        peak_rss_mib(true);
        let t = Instant::now();
        let mut index = FaissIndex::build(FaissParams::of(kind), dim, &entries, &data)?;
        let build = t.elapsed().as_secs_f64();
        let peak = peak_rss_mib(false) - base;
        let held = rss_mib() - base;
        if kind == IndexKind::Flat {
            truth = index.search(&queries, K, &Filter::all())?;
        }
        println!(
            "faiss {:<28} build {build:>7.1} s | memory {held:>6.0} MiB held, {peak:>6.0} MiB peak | {}",
            index.structure(),
            measure(&index, &queries, dim, &truth)?
        );
        // The search-time knob, swept on the built index.
        let sweep: &[usize] = match kind {
            IndexKind::Hnsw => &[32, 64, 256, 512],
            IndexKind::Ivf | IndexKind::IvfPq => &[8, 16, 64],
            IndexKind::Flat => &[],
        };
        for &p in sweep {
            index.set_search_params(p, p)?;
            println!(
                "faiss {:<28}                 |                                     | {}",
                index.structure(),
                measure(&index, &queries, dim, &truth)?
            );
        }
        if let (true, Some((_, store))) = (index.approximate(), &store) {
            for &(nprobe, rerank) in &[(8, DEFAULT_RERANK), (32, DEFAULT_RERANK), (32, 50)] {
                index.set_search_params(nprobe, nprobe)?;
                println!(
                    "faiss {:<45}|                                     | {}",
                    format!("{} rerank={rerank}", index.structure()),
                    measure_reranked(&index, store, rerank, &queries, dim, &truth)?
                );
            }
        }
    }
    drop(store);

    // Milvus gets the same vectors made again chunk by chunk, so that this process does not
    // hold them beside the server.
    drop(data);
    #[cfg(feature = "milvus")]
    if std::env::var("MILVUS").as_deref() != Ok("off") {
        let chunk = |start: usize, n: usize| points(&centres, dim, start, n, 1);
        for kind in [IndexKind::Hnsw, IndexKind::Ivf] {
            match std::env::var("MILVUS_URI") {
                Ok(uri) => milvus_run(&uri, None, kind, dim, &entries, &chunk, &queries, &truth)?,
                Err(_) => {
                    let dir = tempfile::Builder::new()
                        .prefix("kadr-bench-milvus")
                        .tempdir_in(std::env::var("MILVUS_DIR").unwrap_or_else(|_| ".".into()))?;
                    let server = kadr_testkit::milvus::MilvusServer::start(dir.path());
                    let pid = server.server_pid();
                    milvus_run(
                        &server.uri(),
                        pid,
                        kind,
                        dim,
                        &entries,
                        &chunk,
                        &queries,
                        &truth,
                    )?;
                    drop(server);
                }
            }
        }
    }
    #[cfg(not(feature = "milvus"))]
    println!("milvus: not measured (build with --features milvus)");
    Ok(())
}

/// One Milvus kind over the same vectors: insert, flush, wait until every segment is indexed,
/// then the same measurements as FAISS. `pid` is the server's, for its memory.
#[cfg(feature = "milvus")]
#[allow(clippy::too_many_arguments)]
fn milvus_run(
    uri: &str,
    pid: Option<u32>,
    kind: IndexKind,
    dim: usize,
    entries: &[Entry],
    chunk: &dyn Fn(usize, usize) -> Vec<f32>,
    queries: &[f32],
    truth: &[Vec<Hit>],
) -> Result<()> {
    use kadr_engine::index::milvus::{MilvusConfig, MilvusIndex};
    use std::time::Duration;
    let server_rss = || -> String {
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .map_or("?".into(), |kb| format!("{:.0}", kb / 1024.0))
    };
    let cfg = MilvusConfig {
        uri: uri.into(),
        kind,
        nprobe: kadr_engine::index::faiss::DEFAULT_NPROBE,
        ef_search: kadr_engine::index::faiss::DEFAULT_EF_SEARCH,
        timeout: Duration::from_secs(600),
    };
    let mut m = MilvusIndex::open(&cfg, &format!("bench {kind:?}"), dim)?;
    m.recreate()?;
    let t = Instant::now();
    let rows = 4096;
    for (i, e) in entries.chunks(rows).enumerate() {
        m.add(e, &chunk(i * rows, e.len()))?;
    }
    m.persist()?;
    let loaded = t.elapsed().as_secs_f64();
    m.wait_for_index(Duration::from_secs(3600))?;
    let build = t.elapsed().as_secs_f64();
    println!(
        "milvus {:<27} insert+flush {loaded:.1} s, index built {build:>7.1} s | server RSS {} MiB | {}",
        format!("{kind:?}").to_lowercase(),
        server_rss(),
        measure(&m, queries, dim, truth)?
    );
    // Frees the vectors on a server that outlives the bench (an empty collection stays).
    m.recreate()?;
    Ok(())
}
