//! Large-photo decode benchmark for `bench/decode.sh`: decode + preprocess images/second over a
//! folder of big JPEGs, at full size (`decode_limited`, what kadr did before), reduced in the
//! DCT domain as the engine does (`decode_for`: the shorter side kept at `DCT_MARGIN` × the
//! resize) and reduced as far as the resize allows (PIL's draft rule), in parallel on all cores
//! as the engine does; then how close the reduced paths' embeddings are to the full-size
//! path's (cosine, with EfficientNet-Lite0). One JSON line per measurement.
//!
//! Usage: `cargo run -p kadr-engine --example bench_decode -- DIR` with `MODEL_PATH` set to the
//! EfficientNet-Lite0 safetensors (bench/decode.sh does both). `BENCH_ROUNDS` [3] timed passes;
//! the best is reported.

use anyhow::{Context, Result};
use kadr_engine::decode::{decode_for, decode_limited, decode_reduced, MAX_PIXELS};
use kadr_engine::embed::Embedder;
use kadr_engine::preprocess::{preprocess, PreprocessSpec};
use rayon::prelude::*;
use std::time::Instant;

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: bench_decode DIR (a folder of JPEGs, e.g. from bench/decode.py make)")?;
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let files = kadr_engine::dataset::scan(std::path::Path::new(&dir))?;
    anyhow::ensure!(!files.is_empty(), "{dir}: no images");
    let bytes: Vec<Vec<u8>> = files
        .par_iter()
        .map(|f| std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display())))
        .collect::<Result<_>>()?;
    let spec = PreprocessSpec::efficientnet_lite();
    let full = |b: &Vec<u8>| preprocess(&decode_limited(b, MAX_PIXELS).unwrap(), &spec);
    let reduced_to = |side: u32| {
        move |b: &Vec<u8>| preprocess(&decode_reduced(b, MAX_PIXELS, side).unwrap().image, &spec)
    };
    // What the engine does (`decode_for`): reduced while the shorter side stays at least
    // DCT_MARGIN × the resize.
    let reduced = |b: &Vec<u8>| {
        preprocess(
            &decode_for(b, MAX_PIXELS, spec.resize_shorter)
                .unwrap()
                .image,
            &spec,
        )
    };
    // As far as the resize itself allows (what PIL's draft does).
    let reduced1 = reduced_to(spec.resize_shorter);
    let n = bytes.len();
    let (w, h) = {
        let d = decode_for(&bytes[0], MAX_PIXELS, spec.resize_shorter)?;
        ((d.width, d.height), d.image.dimensions())
    };
    eprintln!(
        "bench_decode: {n} images, first {}×{} decoded reduced to {}×{}, {} threads",
        w.0,
        w.1,
        h.0,
        h.1,
        rayon::current_num_threads()
    );
    for (name, f) in [
        (
            "kadr full-size decode",
            &full as &(dyn Fn(&Vec<u8>) -> Vec<f32> + Sync),
        ),
        ("kadr reduced (engine)", &reduced),
        ("kadr reduced to the resize", &reduced1),
    ] {
        f(&bytes[0]);
        let mut best = f64::INFINITY;
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            let checksum: f64 = bytes.par_iter().map(|b| f64::from(f(b)[0])).sum();
            std::hint::black_box(checksum);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{}",
            serde_json::json!({
                "impl": name,
                "images": n,
                "threads": rayon::current_num_threads(),
                "ips": (n as f64 / best * 100.0).round() / 100.0,
                "seconds": (best * 1000.0).round() / 1000.0,
            })
        );
    }

    // Embeddings of both paths, image by image.
    let weights = std::env::var("MODEL_PATH").context("set MODEL_PATH to the weights")?;
    let embedder = Embedder::load(
        "tf_efficientnet_lite0",
        std::path::Path::new(&weights),
        candle_core::Device::Cpu,
        32,
    )?;
    let cosine = |x: &[f32], y: &[f32]| {
        let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
        dot / (norm(x) * norm(y)).max(f32::MIN_POSITIVE)
    };
    let (mut c1, mut c2) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for chunk in bytes.chunks(32) {
        let embed = |f: &(dyn Fn(&Vec<u8>) -> Vec<f32> + Sync)| {
            let data: Vec<f32> = chunk.par_iter().flat_map(f).collect();
            embedder.embed_preprocessed(&data, chunk.len())
        };
        let (va, vb, vc) = (embed(&full)?, embed(&reduced)?, embed(&reduced1)?);
        for ((x, y), z) in va.iter().zip(&vb).zip(&vc) {
            c1.push(cosine(x, y));
            c2.push(cosine(x, z));
        }
    }
    for (name, mut c) in [
        ("cosine engine vs full-size", c1),
        ("cosine to-the-resize vs full-size", c2),
    ] {
        c.sort_by(f32::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "impl": name,
                "images": n,
                "mean": c.iter().sum::<f32>() / n as f32,
                "min": c[0],
                "p5": c[n * 5 / 100],
                "median": c[n / 2],
            })
        );
    }
    Ok(())
}
