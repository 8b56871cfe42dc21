//! Caption throughput: preprocess N synthetic images, then batched generation of a fixed number
//! of tokens (eos ignored). Defaults to the tiny golden weights on CPU; `--config
//! path/to/config.json --random` builds any config (e.g. the real 2B one) with random weights.
//!
//! cargo run --release --example bench_caption -- [--config cfg.json] [--random]
//!     [--weights w.safetensors] [--device cpu|cuda] [--dtype f32|bf16|f16]
//!     [--batches 1,32] [--new-tokens 48] [--size 448]

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use kadr_models::vlm::processor::ImageProcessor;
use kadr_models::vlm::qwen2vl::{Config, GenerationParams, Prompt, Qwen2VlModel};
use std::collections::HashMap;
use std::path::PathBuf;
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

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        d => bail!("unknown device {d}"),
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => bail!("unknown dtype {d}"),
    };
    let cfg_path = args
        .config
        .clone()
        .unwrap_or_else(|| golden_dir().join("qwen2vl_tiny.json"));
    let cfg = load_config(&cfg_path)?;

    let t0 = Instant::now();
    let mut model = if args.random {
        random_model(&cfg, dtype, &device)?
    } else {
        let w = args
            .weights
            .clone()
            .unwrap_or_else(|| golden_dir().join("qwen2vl_tiny.safetensors"));
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[w], dtype, &device)? };
        // The golden file prefixes its weights with `weights.`.
        let vb = if vb.contains_tensor("weights.model.embed_tokens.weight") {
            vb.pp("weights")
        } else {
            vb
        };
        Qwen2VlModel::new(&cfg, vb)?
    };
    println!(
        "model: {} (text {}x{}, vision {}x{}), {:?} {:?}, built in {:.2}s",
        cfg_path.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vision_config.depth,
        cfg.vision_config.embed_dim,
        device,
        dtype,
        t0.elapsed().as_secs_f64()
    );

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

    println!(
        "\n{:>5} | {:>9} | {:>9} | {:>9} | {:>10} | {:>10} | {:>12} | {:>8}",
        "batch",
        "tokens/im",
        "prep s",
        "vision s",
        "prefill s",
        "decode s",
        "decode tok/s",
        "img/s"
    );
    println!("{}", "-".repeat(94));
    for &b in &args.batches {
        let imgs: Vec<RgbImage> = (0..b).map(|i| synthetic_image(i, args.size)).collect();
        let t = Instant::now();
        let inputs = imgs
            .iter()
            .map(|im| proc.preprocess(im, &device))
            .collect::<Result<Vec<_>>>()?;
        let prep = t.elapsed().as_secs_f64();
        let n_img_tok = cfg.image_tokens(inputs[0].grid_thw);
        let prompts: Vec<Prompt> = inputs
            .into_iter()
            .map(|im| {
                let mut ids: Vec<u32> = text(20, 10).collect();
                ids.push(cfg.vision_start_token_id);
                ids.extend(std::iter::repeat_n(cfg.image_token_id, n_img_tok));
                ids.push(cfg.vision_end_token_id);
                ids.extend(text(10, 40));
                Prompt {
                    input_ids: ids,
                    images: vec![im],
                }
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
        let t = Instant::now();
        model.vision_embeds(&pv, &grids)?;
        device.synchronize()?;
        let vision = t.elapsed().as_secs_f64();
        let t = Instant::now();
        model.generate(&prompts, &prefill_only)?;
        device.synchronize()?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = model.generate(&prompts, &params)?;
        device.synchronize()?;
        let total = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|o| o.len() == args.new_tokens));
        let decode = (total - prefill).max(1e-9);
        println!(
            "{:>5} | {:>9} | {:>9.3} | {:>9.3} | {:>10.3} | {:>10.3} | {:>12.1} | {:>8.2}",
            b,
            n_img_tok,
            prep,
            vision,
            prefill,
            decode,
            (b * (args.new_tokens - 1)) as f64 / decode,
            b as f64 / (prep + total)
        );
    }
    Ok(())
}
