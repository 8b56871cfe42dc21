//! Caption throughput: preprocess N synthetic images, then batched generation of a fixed number
//! of tokens (eos ignored). Defaults to the tiny golden weights on CPU; `--config
//! path/to/config.json --random` builds any config (e.g. the real 2B one) with random weights.
//!
//! cargo run --release --example bench_caption -- [--config cfg.json] [--random]
//!     [--weights w.safetensors] [--device cpu|cuda] [--dtype f32|bf16|f16]
//!     [--batches 1,32] [--new-tokens 48] [--size 448]
//!     [--check c.safetensors [--check-dtype f32]] [--json] [--min-seconds 1]
//!
//! Each timed part (preprocessing, vision tower, prefill, whole generation) runs at least once
//! and again until `--min-seconds` have passed; the median is reported.
//!
//! `--check` (the check file of `bench/gpu/qwen2vl.py prepare`, whose weights `--weights`
//! names): first, in `--check-dtype`, the logits at the last prompt position of its 3 prompts
//! (every position too when the file has them) against transformers', its greedy tokens against
//! transformers' (eos ignored on both sides), and kadr's own preprocessing of the same synthetic
//! images against transformers' `pixel_values`; then, when `--dtype` differs, the same against
//! the reference in `--dtype` (the drift); then the throughput, with the check file's prompt.
//! Every result is a JSON line on stdout (`--json` alone does that for the plain benchmark),
//! the human table goes to stderr.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use kadr_models::vlm::processor::ImageProcessor;
use kadr_models::vlm::qwen2vl::{Config, GenerationParams, ImageInput, Prompt, Qwen2VlModel};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    config: Option<PathBuf>,
    weights: Option<PathBuf>,
    random: bool,
    device: String,
    dtype: String,
    batches: Vec<usize>,
    new_tokens: usize,
    size: u32,
    check: Option<PathBuf>,
    check_dtype: String,
    json: bool,
    min_seconds: f64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        config: None,
        weights: None,
        random: false,
        device: "cpu".into(),
        dtype: "f32".into(),
        batches: vec![1, 32],
        new_tokens: 48,
        size: 448,
        check: None,
        check_dtype: "f32".into(),
        json: false,
        min_seconds: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => a.config = Some(val()?.into()),
            "--weights" => a.weights = Some(val()?.into()),
            "--random" => a.random = true,
            "--device" => a.device = val()?,
            "--dtype" => a.dtype = val()?,
            "--batches" => {
                a.batches = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--new-tokens" => a.new_tokens = val()?.parse()?,
            "--size" => a.size = val()?.parse()?,
            "--check" => a.check = Some(val()?.into()),
            "--check-dtype" => a.check_dtype = val()?,
            "--json" => a.json = true,
            "--min-seconds" => a.min_seconds = val()?.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

fn golden_dir() -> PathBuf {
    kadr_testkit::shared_dir().join("golden")
}

fn load_config(path: &PathBuf) -> Result<Config> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    // The golden json wraps the hub config.
    let v = v.get("config_json_like_hub").cloned().unwrap_or(v);
    Ok(Config::from_json_value(v)?)
}

/// Random weights for any config. They are drawn in f32 (candle's CUDA backend has no bf16/f16
/// random normal) and converted to `dtype` afterwards.
fn random_model(cfg: &Config, dtype: DType, device: &Device) -> Result<Qwen2VlModel> {
    let vm = VarMap::new();
    drop(Qwen2VlModel::new(
        cfg,
        VarBuilder::from_varmap(&vm, DType::F32, device),
    )?);
    let tensors: HashMap<String, Tensor> = {
        let data = vm.data().lock().unwrap();
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect::<Result<_>>()?
    };
    drop(vm);
    Ok(Qwen2VlModel::new(
        cfg,
        VarBuilder::from_tensors(tensors, dtype, device),
    )?)
}

fn synthetic_image(i: usize, size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let k = i as u32 * 37;
        image::Rgb([
            ((x + k) % 256) as u8,
            ((y * 2 + k) % 256) as u8,
            ((x ^ y).wrapping_add(k) % 256) as u8,
        ])
    })
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => bail!("unknown dtype {d}"),
    })
}

/// The model of `args`: random weights, `--weights`, or the tiny golden weights.
fn load_model(cfg: &Config, args: &Args, dtype: DType, device: &Device) -> Result<Qwen2VlModel> {
    if args.random {
        return random_model(cfg, dtype, device);
    }
    let w = args
        .weights
        .clone()
        .unwrap_or_else(|| golden_dir().join("qwen2vl_tiny.safetensors"));
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[w], dtype, device)? };
    // The golden file prefixes its weights with `weights.`.
    let vb = if vb.contains_tensor("weights.model.embed_tokens.weight") {
        vb.pp("weights")
    } else {
        vb
    };
    Ok(Qwen2VlModel::new(cfg, vb)?)
}

/// Median seconds of `f`, run once and then again until `min_s` seconds have passed in all.
fn median_time(min_s: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut times = Vec::new();
    while times.is_empty() || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Prints the human table to stdout, or to stderr when stdout carries JSON lines.
fn table(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn json_line(v: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Caption throughput at each batch size. `base_ids`: the prompt of the check file (its image
/// pad run must fit an image of `--size`); otherwise the shape of the chat template.
fn throughput(
    model: &mut Qwen2VlModel,
    cfg: &Config,
    args: &Args,
    device: &Device,
    base_ids: Option<&[u32]>,
) -> Result<()> {
    let json = args.json || args.check.is_some();
    let proc = ImageProcessor::from_vision_config(&cfg.vision_config);
    let params = GenerationParams {
        max_new_tokens: args.new_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let prefill_only = GenerationParams {
        max_new_tokens: 1,
        ..params.clone()
    };
    // Text ids around the image: the shape of the chat template (about 20 + 10 tokens).
    let vocab = cfg.vocab_size as u32;
    let text = |n: u32, off: u32| (0..n).map(move |i| (off + i) % vocab.min(200));

    table(
        json,
        &format!(
            "\n{:>5} | {:>9} | {:>9} | {:>9} | {:>10} | {:>10} | {:>12} | {:>8}",
            "batch",
            "tokens/im",
            "prep s",
            "vision s",
            "prefill s",
            "decode s",
            "decode tok/s",
            "img/s"
        ),
    );
    table(json, &"-".repeat(94));
    for &b in &args.batches {
        let imgs: Vec<RgbImage> = (0..b).map(|i| synthetic_image(i, args.size)).collect();
        let mut inputs = Vec::new();
        let prep = median_time(args.min_seconds, || {
            inputs = imgs
                .iter()
                .map(|im| proc.preprocess(im, device))
                .collect::<Result<Vec<_>>>()?;
            Ok(())
        })?;
        let n_img_tok = cfg.image_tokens(inputs[0].grid_thw);
        let ids: Vec<u32> = match base_ids {
            Some(ids) => {
                let n = ids.iter().filter(|&&t| t == cfg.image_token_id).count();
                if n != n_img_tok {
                    bail!(
                        "the check prompt has {n} image tokens, a {} px image gives {n_img_tok}",
                        args.size
                    );
                }
                ids.to_vec()
            }
            None => {
                let mut ids: Vec<u32> = text(20, 10).collect();
                ids.push(cfg.vision_start_token_id);
                ids.extend(std::iter::repeat_n(cfg.image_token_id, n_img_tok));
                ids.push(cfg.vision_end_token_id);
                ids.extend(text(10, 40));
                ids
            }
        };
        let prompts: Vec<Prompt> = inputs
            .into_iter()
            .map(|im| Prompt {
                input_ids: ids.clone(),
                images: vec![im],
            })
            .collect();
        // Warm-up (allocations, kernels) on a batch of one.
        model.generate(&prompts[..1], &prefill_only)?;
        // Vision tower alone (it is part of the prefill column too).
        let pv = Tensor::cat(
            &prompts
                .iter()
                .map(|p| p.images[0].pixel_values.clone())
                .collect::<Vec<_>>(),
            0,
        )?;
        let grids: Vec<[usize; 3]> = prompts.iter().map(|p| p.images[0].grid_thw).collect();
        let vision = median_time(args.min_seconds, || {
            model.vision_embeds(&pv, &grids)?;
            Ok(device.synchronize()?)
        })?;
        let prefill = median_time(args.min_seconds, || {
            model.generate(&prompts, &prefill_only)?;
            Ok(device.synchronize()?)
        })?;
        let total = median_time(args.min_seconds, || {
            let out = model.generate(&prompts, &params)?;
            device.synchronize()?;
            assert!(out.iter().all(|o| o.len() == args.new_tokens));
            Ok(())
        })?;
        // NaN (null in JSON) when noise puts the median prefill above the whole generation.
        let decode = total - prefill;
        let decode_tok_s = if decode > 0.0 {
            (b * (args.new_tokens - 1)) as f64 / decode
        } else {
            f64::NAN
        };
        let ips = b as f64 / (prep + total);
        table(
            json,
            &format!(
                "{:>5} | {:>9} | {:>9.3} | {:>9.3} | {:>10.3} | {:>10.3} | {:>12.1} | {:>8.2}",
                b, n_img_tok, prep, vision, prefill, decode, decode_tok_s, ips
            ),
        );
        if json {
            json_line(json!({
                "impl": "kadr", "dtype": args.dtype, "device": args.device, "batch": b,
                "size": args.size, "new_tokens": args.new_tokens, "prompt_len": ids.len(),
                "image_tokens": n_img_tok, "prep_s": prep, "vision_s": vision,
                "prefill_s": prefill, "decode_s": decode, "generate_s": total,
                "decode_tok_s": decode_tok_s, "ips": ips, "generate_ips": b as f64 / total,
                "min_seconds": args.min_seconds,
            }))?;
        }
    }
    Ok(())
}

/// The inputs and transformers' outputs of a `qwen2vl.py prepare` check file.
struct Check {
    prompts: Vec<Prompt>,
    /// `[B, V]` f32, the last prompt position.
    logits_last: Tensor,
    /// `[B, L, V]` f32, when the file has every position.
    logits: Option<Tensor>,
    tokens: Vec<Vec<u32>>,
    pixel_values: Tensor,
}

fn read_check(path: &Path) -> Result<Check> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut take = |k: &str| {
        t.remove(k)
            .with_context(|| format!("{}: no {k}", path.display()))
    };
    let ids = take("input.input_ids")?
        .to_dtype(DType::I64)?
        .to_vec2::<i64>()?;
    let grids = take("input.image_grid_thw")?
        .to_dtype(DType::I64)?
        .to_vec2::<i64>()?;
    let pixel_values = take("input.pixel_values")?.to_dtype(DType::F32)?;
    let logits_last = take("out.logits_last")?.to_dtype(DType::F32)?;
    let tokens = take("out.tokens")?.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let logits = take("out.logits").ok();
    if ids.len() != grids.len() {
        bail!(
            "{} prompts but {} images (one each)",
            ids.len(),
            grids.len()
        );
    }
    let mut row = 0;
    let mut prompts = Vec::new();
    for (ids, g) in ids.iter().zip(&grids) {
        let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
        let n = grid.iter().product::<usize>();
        prompts.push(Prompt {
            input_ids: ids.iter().map(|&v| v as u32).collect(),
            images: vec![ImageInput {
                pixel_values: pixel_values.narrow(0, row, n)?,
                grid_thw: grid,
            }],
        });
        row += n;
    }
    let to_u32 = |r: &Vec<i64>| r.iter().map(|&v| v as u32).collect();
    Ok(Check {
        prompts,
        logits_last,
        logits,
        tokens: tokens.iter().map(to_u32).collect(),
        pixel_values,
    })
}

fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar()?)
}

/// kadr's logits and greedy tokens on the check inputs against transformers': one JSON object.
fn compare(model: &mut Qwen2VlModel, c: &Check) -> Result<serde_json::Value> {
    let logits = model
        .forward_prompts(&c.prompts)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let l = logits.dim(1)?;
    let last = logits.i((.., l - 1, ..))?;
    let d_last = max_abs(&(&last - &c.logits_last)?)?;
    let argmax_equal = last.argmax(D::Minus1)?.to_vec1::<u32>()?
        == c.logits_last.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let d_all = match &c.logits {
        Some(r) => Some(max_abs(&(&logits - r)?)?),
        None => None,
    };
    let params = GenerationParams {
        max_new_tokens: c.tokens[0].len(),
        ignore_eos: true,
        ..Default::default()
    };
    let tokens = model.generate(&c.prompts, &params)?;
    let (mut same, mut n) = (0, 0);
    let first_mismatch: Vec<Option<usize>> = tokens
        .iter()
        .zip(&c.tokens)
        .map(|(k, r)| {
            same += k.iter().zip(r).filter(|(a, b)| a == b).count();
            n += r.len();
            (0..r.len()).find(|&i| k.get(i) != r.get(i))
        })
        .collect();
    eprintln!("kadr tokens {tokens:?}");
    Ok(json!({
        "logits_max_abs_diff": d_last,
        "logits_all_max_abs_diff": d_all,
        "logits_max_abs_ref": max_abs(&c.logits_last)?,
        "argmax_equal": argmax_equal,
        "tokens_equal": tokens == c.tokens,
        "tokens_matching": format!("{same}/{n}"),
        "first_mismatch": first_mismatch,
    }))
}

fn check_mode(cfg: &Config, args: &Args, path: &Path, device: &Device) -> Result<()> {
    if args.random || args.weights.is_none() {
        bail!("--check needs --weights: the weight file qwen2vl.py wrote beside the check file");
    }
    let c = read_check(path)?;
    let grid = c.prompts[0].images[0].grid_thw;
    let px = grid[1] * cfg.vision_config.patch_size;
    eprintln!(
        "check {}: {} prompts of {} ids, grid {:?} ({} px), {} tokens each",
        path.display(),
        c.prompts.len(),
        c.prompts[0].input_ids.len(),
        grid,
        px,
        c.tokens[0].len()
    );
    if px as u32 != args.size {
        eprintln!(
            "note: the check images are {px} px, the benchmark's {} px",
            args.size
        );
    }
    // kadr's own preprocessing of the same synthetic images against transformers'.
    let proc = ImageProcessor::from_vision_config(&cfg.vision_config);
    let mine = (0..c.prompts.len())
        .map(|i| {
            Ok(proc
                .preprocess(&synthetic_image(i, px as u32), &Device::Cpu)?
                .pixel_values)
        })
        .collect::<Result<Vec<_>>>()?;
    let mine = Tensor::cat(&mine, 0)?;
    let d_pix = if mine.dims() == c.pixel_values.dims() {
        Some(max_abs(&(&mine - &c.pixel_values)?)?)
    } else {
        None
    };

    let check_dtype = parse_dtype(&args.check_dtype)?;
    let t = Instant::now();
    let mut model = load_model(cfg, args, check_dtype, device)?;
    eprintln!(
        "kadr {:?} {check_dtype:?} built in {:.2}s",
        device,
        t.elapsed().as_secs_f64()
    );
    let mut r = compare(&mut model, &c)?;
    r["impl"] = "kadr".into();
    r["check"] = true.into();
    r["dtype"] = args.check_dtype.clone().into();
    r["device"] = args.device.clone().into();
    r["pixel_max_abs_diff"] = d_pix.into();
    json_line(r)?;
    let dtype = parse_dtype(&args.dtype)?;
    if dtype != check_dtype {
        drop(model);
        let t = Instant::now();
        model = load_model(cfg, args, dtype, device)?;
        eprintln!(
            "kadr {:?} {dtype:?} built in {:.2}s",
            device,
            t.elapsed().as_secs_f64()
        );
        let mut r = compare(&mut model, &c)?;
        r["impl"] = "kadr".into();
        r["drift"] = true.into();
        r["dtype"] = args.dtype.clone().into();
        r["reference_dtype"] = args.check_dtype.clone().into();
        r["device"] = args.device.clone().into();
        json_line(r)?;
    }
    let ids = c.prompts[0].input_ids.clone();
    throughput(&mut model, cfg, args, device, Some(&ids))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        d => bail!("unknown device {d}"),
    };
    let dtype = parse_dtype(&args.dtype)?;
    let cfg_path = args
        .config
        .clone()
        .unwrap_or_else(|| golden_dir().join("qwen2vl_tiny.json"));
    let cfg = load_config(&cfg_path)?;
    if let Some(check) = &args.check {
        return check_mode(&cfg, &args, check, &device);
    }

    let t0 = Instant::now();
    let mut model = load_model(&cfg, &args, dtype, &device)?;
    table(
        args.json,
        &format!(
            "model: {} (text {}x{}, vision {}x{}), {:?} {:?}, built in {:.2}s",
            cfg_path.display(),
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.vision_config.depth,
            cfg.vision_config.embed_dim,
            device,
            dtype,
            t0.elapsed().as_secs_f64()
        ),
    );
    throughput(&mut model, &cfg, &args, &device, None)
}
