//! Embedding throughput of one backbone on one device, one JSON line per batch size: the
//! backbone's forward pass on a batch already on the device (what PyTorch's `model(x)` does in
//! `bench/embed.py`), and the engine's whole embed call (host → device, forward, L2
//! normalisation, device → host). `bench/embed.sh` runs it beside timm on the same machine and
//! prints the ratios; `bench/gpu/` does the same on a GPU.
//!
//! `--check FILE` first compares the backbone's features with a reference made by
//! `bench/embed.py --write-check` (safetensors with `input` and `out.pre_logits`) and prints
//! the worst cosine similarity and absolute difference.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use clap::ValueEnum;
use kadr_engine::embed::{parse_device, Embedder};
use kadr_engine::settings::Dtype;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model family name (`tf_efficientnet_lite0`, `convnext_tiny`, ...).
    #[arg(long)]
    model: String,
    /// safetensors weights with timm key names.
    #[arg(long)]
    weights: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32`, `f16`, `bf16` or `auto`.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,32", value_delimiter = ',')]
    batches: Vec<usize>,
    /// Seconds timed per batch size (after one warm-up pass).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    side: usize,
    /// Reference features to compare with before timing.
    #[arg(long)]
    check: Option<PathBuf>,
}

fn sync(dev: &Device) -> Result<()> {
    Ok(dev.synchronize()?)
}

/// Deterministic pseudo-random pixels in [-1, 1) (the rate does not depend on the values).
fn pixels(n: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn check(e: &Embedder, file: &PathBuf) -> Result<serde_json::Value> {
    let t = candle_core::safetensors::load(file, &Device::Cpu)
        .with_context(|| format!("reading {}", file.display()))?;
    let x = t.get("input").context("no `input` in the check file")?;
    let want = t
        .get("out.pre_logits")
        .context("no `out.pre_logits` in the check file")?
        .to_dtype(DType::F32)?;
    let got = e
        .features(&x.to_device(e.device())?.to_dtype(e.dtype())?)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let max_abs = (&got - &want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let dot = (&got * &want)?.sum(1)?;
    let norms = (got.sqr()?.sum(1)?.sqrt()? * want.sqr()?.sum(1)?.sqrt()?)?;
    let min_cos = (dot / norms)?.min(0)?.to_scalar::<f32>()?;
    Ok(
        serde_json::json!({"check": file.display().to_string(), "images": x.dim(0)?,
        "max_abs_diff": max_abs, "min_cosine": min_cos}),
    )
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = parse_device(&a.device)?;
    let dtype = a.dtype.resolve(&device);
    let dtype_name = a
        .dtype
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    let t = Instant::now();
    let e = Embedder::load_as(&a.model, &a.weights, device.clone(), dtype, max_batch)?;
    let load_s = t.elapsed().as_secs_f64();
    eprintln!(
        "kadr embed bench: {} on {:?} {:?}, {} rayon threads, loaded in {load_s:.2} s, profile {}",
        a.model,
        device,
        dtype,
        rayon::current_num_threads(),
        if cfg!(debug_assertions) {
            "with debug assertions"
        } else {
            "without debug assertions"
        }
    );
    if let Some(f) = &a.check {
        println!("{}", check(&e, f)?);
    }
    let per = 3 * a.side * a.side;
    for &b in &a.batches {
        let host = pixels(b * per);
        let x = Tensor::from_slice(&host, (b, 3, a.side, a.side), &device)?.to_dtype(dtype)?;
        // Warm-up: kernel loading, allocator pools, weight packing.
        e.features(&x)?;
        sync(&device)?;
        let (mut n, t) = (0usize, Instant::now());
        while n == 0 || t.elapsed().as_secs_f64() < a.seconds {
            std::hint::black_box(e.features(&x)?);
            sync(&device)?;
            n += 1;
        }
        let forward_s = t.elapsed().as_secs_f64() / n as f64;
        // The engine's whole embed call on host data, timed the same way.
        let (mut m, t) = (0usize, Instant::now());
        while m == 0 || t.elapsed().as_secs_f64() < a.seconds.min(2.0) {
            std::hint::black_box(e.embed_preprocessed(&host, b)?);
            m += 1;
        }
        let embed_s = t.elapsed().as_secs_f64() / m as f64;
        println!(
            "{}",
            serde_json::json!({
                "impl": "kadr", "model": a.model, "device": a.device, "dtype": dtype_name,
                "batch": b, "iters": n,
                "ms_per_batch": forward_s * 1e3, "ips": b as f64 / forward_s,
                "embed_call_ips": b as f64 / embed_s,
            })
        );
    }
    Ok(())
}
