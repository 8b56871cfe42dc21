//! Throughput benchmark of kadr's indexing pipeline, one JSON line per dataset folder:
//! decode + preprocess (as the engine decodes: large JPEGs reduced in the DCT domain), embed, and the whole pipeline (read, hash, decode, preprocess, embed,
//! SQLite, FAISS), in images per second. `bench/run.sh` runs it beside the same pipeline in
//! Python (PIL + timm + faiss) and prints the ratios.
//!
//! Environment:
//! - `BENCH_DATA`: comma-separated dataset folders (required; relative to the workspace root).
//! - `MODEL_PATH`: EfficientNet-Lite0 safetensors [default:
//!   `models/tf_efficientnet_lite0/model.safetensors` under the workspace root, else the shared
//!   folder's copy].
//! - `MAX_BATCH_SIZE`: images per forward pass [default 32].
//! - `BENCH_EMBED_N`: images timed in the embed-only stage [default 512; all inputs are
//!   224×224, so the rate does not depend on which images].
//! - `BENCH_LIMIT`: use only the first N images of each folder [default: all].
//!
//! Run as `cargo bench -p kadr --bench pipeline` (release profile) or, to reuse the dev build's
//! FAISS, `cargo run -p kadr --example bench_pipeline` (the example includes this file).

use anyhow::{bail, Context, Result};
use kadr_engine::embed::Embedder;
use kadr_engine::index::IndexKind;
use kadr_engine::preprocess::{preprocess, PreprocessSpec};
use kadr_engine::workspace::Workspace;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MODEL: &str = "tf_efficientnet_lite0";

fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Relative paths are taken from the workspace root (cargo bench runs in `server/`).
fn from_root(p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        workspace_root().join(p)
    }
}

fn weights() -> Result<PathBuf> {
    if let Some(p) = std::env::var("MODEL_PATH")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let p = from_root(&p);
        let f = if p.is_dir() {
            p.join("model.safetensors")
        } else {
            p
        };
        if !f.is_file() {
            bail!("MODEL_PATH {}: no such weights file", f.display());
        }
        return Ok(f);
    }
    let rel = "models/tf_efficientnet_lite0/model.safetensors";
    for cand in [
        workspace_root().join(rel),
        kadr_testkit::shared_dir().join(rel),
    ] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!("no weights: set MODEL_PATH or run scripts/setup.sh (it writes {rel})")
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        f64::INFINITY
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn bench_folder(
    folder: &Path,
    weights: &Path,
    batch: usize,
    embed_n: usize,
    limit: Option<usize>,
) -> Result<serde_json::Value> {
    let mut files = kadr_engine::dataset::scan(folder)?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    anyhow::ensure!(!files.is_empty(), "{}: no images", folder.display());
    let n = files.len();

    // Untimed: the file bytes in memory (the page cache is warm for the pipeline run too).
    let bytes: Vec<Vec<u8>> = files
        .par_iter()
        .map(|f| std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display())))
        .collect::<Result<_>>()?;
    let spec = PreprocessSpec::efficientnet_lite();

    // 1. Decode + preprocess, in parallel on all cores as the engine does. Results are dropped
    //    as they are made (10,000 × 602 KB would not fit comfortably); a checksum keeps them live.
    let t = Instant::now();
    let checksum: f64 = bytes
        .par_iter()
        .map(|b| {
            match kadr_engine::decode::decode_for(
                b,
                kadr_engine::decode::MAX_PIXELS,
                spec.resize_shorter,
            ) {
                Ok(d) => f64::from(preprocess(&d.image, &spec)[0]),
                Err(_) => 0.0,
            }
        })
        .sum();
    let decode_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(checksum);

    // 2. Embed preprocessed data (untimed preprocessing of the first `embed_n` images).
    let embedder = Embedder::load(MODEL, weights, candle_core::Device::Cpu, batch)?;
    let m = embed_n.min(n);
    let data: Vec<f32> = bytes[..m]
        .par_iter()
        .map(|b| {
            kadr_engine::decode::decode_for(b, kadr_engine::decode::MAX_PIXELS, spec.resize_shorter)
                .map(|d| preprocess(&d.image, &spec))
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?
        .concat();
    // Warm-up: one batch (allocations, weight packing) outside the timing.
    let warm = batch.min(m);
    embedder.embed_preprocessed(&data[..warm * spec.numel()], warm)?;
    let t = Instant::now();
    let vectors = embedder.embed_preprocessed(&data, m)?;
    let embed_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        vectors.len() == m,
        "embedder returned {} vectors for {m} images",
        vectors.len()
    );
    drop(data);
    drop(bytes);

    // 3. The whole pipeline: a fresh workspace, `index_files` over the scanned folder.
    let home = tempfile::tempdir()?;
    let embedder = Embedder::load(MODEL, weights, candle_core::Device::Cpu, batch)?;
    let ws = Workspace::open_with(home.path(), embedder, IndexKind::Flat)?;
    let t = Instant::now();
    let report = ws.index_files(&files, batch, &|_: usize| {})?;
    let pipeline_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} files failed: {:?}",
        report.failed.len(),
        &report.failed[..1]
    );
    anyhow::ensure!(ws.len() == n, "index holds {} of {n} images", ws.len());

    let set = folder
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(serde_json::json!({
        "impl": "kadr",
        "set": set,
        "images": n,
        "embed_images": m,
        "batch": batch,
        "threads": rayon::current_num_threads(),
        "decode_ips": round1(rate(n, decode_secs)),
        "embed_ips": round1(rate(m, embed_secs)),
        "pipeline_ips": round1(rate(n, pipeline_secs)),
        "decode_s": decode_secs,
        "embed_s": embed_secs,
        "pipeline_s": pipeline_secs,
    }))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let data = std::env::var("BENCH_DATA")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .context(
            "set BENCH_DATA to a comma-separated list of dataset folders (see bench/run.sh)",
        )?;
    let weights = weights()?;
    let batch = env_usize("MAX_BATCH_SIZE").unwrap_or(32);
    let embed_n = env_usize("BENCH_EMBED_N").unwrap_or(512);
    let limit = env_usize("BENCH_LIMIT");
    eprintln!(
        "kadr pipeline bench: weights {}, batch {batch}, {} threads, profile {}",
        weights.display(),
        rayon::current_num_threads(),
        if cfg!(debug_assertions) {
            "dev (debug assertions on)"
        } else {
            "release"
        }
    );
    for folder in data.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let folder = from_root(folder);
        let line = bench_folder(&folder, &weights, batch, embed_n, limit)
            .with_context(|| format!("benchmarking {}", folder.display()))?;
        println!("{line}");
    }
    Ok(())
}
