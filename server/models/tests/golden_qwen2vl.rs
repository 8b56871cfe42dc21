//! Acceptance test against the HF golden of a tiny 2-layer Qwen2-VL, plus id-level checks of
//! batching, generation and zero-shot scoring on the same weights (no tokenizer needed).

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use kadr_models::vlm::qwen2vl::{
    rope_index, Config, GenerationParams, ImageInput, LabelScore, Prompt, Qwen2VlModel,
};
use std::collections::HashMap;

struct Golden {
    cfg: Config,
    model: Qwen2VlModel,
    t: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let root = kadr_testkit::shared_dir();
    let dir = root.join("golden");
    let st = dir.join("qwen2vl_tiny.safetensors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("qwen2vl_tiny.json")).unwrap())
            .unwrap();
    let cfg = Config::from_json_value(json["config_json_like_hub"].clone()).unwrap();
    let dev = Device::Cpu;
    let t = candle_core::safetensors::load(&st, &dev).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[st], DType::F32, &dev).unwrap() };
    let model = Qwen2VlModel::new(&cfg, vb.pp("weights")).unwrap();
    Golden { cfg, model, t }
}

impl Golden {
    fn ids(&self, name: &str) -> Vec<u32> {
        self.t[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn image(&self) -> ImageInput {
        let g = self.ids("input.image_grid_thw");
        ImageInput {
            pixel_values: self.t["input.pixel_values"].clone(),
            grid_thw: [g[0] as usize, g[1] as usize, g[2] as usize],
        }
    }

    fn prompt(&self) -> Prompt {
        Prompt {
            input_ids: self.ids("input.input_ids"),
            images: vec![self.image()],
        }
    }
}

use kadr_testkit as common;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    common::max_abs_diff(a, b)
}

#[test]
fn golden_vision_logits_generate() {
    let mut g = golden();
    let img = g.image();

    let vis = g
        .model
        .vision_embeds(&img.pixel_values, &[img.grid_thw])
        .unwrap();
    let d_vis = max_abs_diff(&vis, &g.t["out.vision_embeds"]);
    println!("vision_embeds max abs diff = {d_vis:.3e}");
    assert!(d_vis < 1e-4);

    let prompt = g.prompt();
    let logits = g
        .model
        .forward_prompts(std::slice::from_ref(&prompt))
        .unwrap();
    let d_log = max_abs_diff(&logits, &g.t["out.logits"]);
    println!("logits [1,14,256] max abs diff = {d_log:.3e}");
    assert!(d_log < 1e-4);

    // generated_ids holds the prompt followed by the 8 greedy tokens.
    let expected = g.ids("out.generated_ids");
    let n_prompt = prompt.input_ids.len();
    let params = GenerationParams {
        max_new_tokens: expected.len() - n_prompt,
        eos_token_ids: g.cfg.eos_token_ids(),
        ..Default::default()
    };
    let new = g
        .model
        .generate(std::slice::from_ref(&prompt), &params)
        .unwrap()
        .remove(0);
    println!("generated {new:?}, expected {:?}", &expected[n_prompt..]);
    assert_eq!(&expected[..n_prompt], &prompt.input_ids[..]);
    assert_eq!(new, expected[n_prompt..].to_vec());
}

#[test]
fn rope_index_matches_hf_layout() {
    let g = golden();
    let p = g.prompt();
    let (pos, delta) = rope_index(&p.input_ids, &[p.images[0].grid_thw], &g.cfg, 14).unwrap();
    // 3 text tokens at 0..3, a 2x3 merged image at t=3, h=3..5, w=3..6, text resumes at 6.
    assert_eq!(pos[0], vec![0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 10]);
    assert_eq!(pos[1], vec![0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 9, 10]);
    assert_eq!(pos[2], vec![0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(delta, 11 - 14);
}

/// A second, smaller image: the first 2x2 patches of the golden grid (a valid 1x2x2 image).
fn small_image(g: &Golden) -> ImageInput {
    ImageInput {
        pixel_values: g.t["input.pixel_values"].narrow(0, 0, 4).unwrap(),
        grid_thw: [1, 2, 2],
    }
}

#[test]
fn vision_images_do_not_attend_to_each_other() {
    let g = golden();
    let a = g.image();
    let b = small_image(&g);
    let alone_a = g
        .model
        .vision_embeds(&a.pixel_values, &[a.grid_thw])
        .unwrap();
    let alone_b = g
        .model
        .vision_embeds(&b.pixel_values, &[b.grid_thw])
        .unwrap();
    let both = Tensor::cat(&[&a.pixel_values, &b.pixel_values, &a.pixel_values], 0).unwrap();
    let joint = g
        .model
        .vision_embeds(&both, &[a.grid_thw, b.grid_thw, a.grid_thw])
        .unwrap();
    let d1 = max_abs_diff(&joint.narrow(0, 0, 6).unwrap(), &alone_a);
    let d2 = max_abs_diff(&joint.narrow(0, 6, 1).unwrap(), &alone_b);
    let d3 = max_abs_diff(&joint.narrow(0, 7, 6).unwrap(), &alone_a);
    println!("multi-image vision diffs {d1:.1e} {d2:.1e} {d3:.1e}");
    assert!(d1 < 1e-5 && d2 < 1e-5 && d3 < 1e-5);
}

#[test]
fn batched_left_padded_matches_single() {
    let mut g = golden();
    let p1 = g.prompt();
    let p2 = Prompt {
        input_ids: vec![10, 252, 250, 253, 30, 31],
        images: vec![small_image(&g)],
    };
    let p3 = Prompt {
        input_ids: vec![40, 41, 42],
        images: vec![],
    };
    let prompts = vec![p1, p2, p3];
    let params = GenerationParams {
        max_new_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let batched = g.model.generate(&prompts, &params).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let single = g.model.generate(std::slice::from_ref(p), &params).unwrap();
        assert_eq!(batched[i], single[0], "prompt {i}");
    }
    // Logits of the padded batch agree with the unpadded ones at real positions.
    let lb = g.model.forward_prompts(&prompts).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let ls = g.model.forward_prompts(std::slice::from_ref(p)).unwrap();
        let n = p.input_ids.len();
        let rows = lb.i(i).unwrap().narrow(0, 14 - n, n).unwrap();
        let d = max_abs_diff(&rows, &ls.squeeze(0).unwrap());
        println!("batched vs single logits, prompt {i}: {d:.1e}");
        assert!(d < 1e-4);
    }
}

#[test]
fn sampling_is_seeded() {
    let mut g = golden();
    let p = g.prompt();
    let params = GenerationParams {
        max_new_tokens: 10,
        temperature: Some(1.5),
        top_p: Some(0.95),
        seed: 7,
        ignore_eos: true,
        ..Default::default()
    };
    let a = g.model.generate(&[p.clone(), p.clone()], &params).unwrap();
    let b = g.model.generate(&[p.clone(), p], &params).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].len(), 10);
    println!("sampled: {:?}", a);
}

/// Softmax of `z / t` in f64.
fn softmax_t(z: &[f64], t: f64) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The tokens top-p keeps, as candle's sampler does: by falling probability until their sum
/// reaches `top_p` (the one crossing it included).
fn nucleus(probs: &[f64], top_p: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut sum = 0.0;
    order
        .into_iter()
        .take_while(|&i| {
            let keep = sum < top_p;
            sum += probs[i];
            keep
        })
        .collect()
}

/// The mean and standard deviation of the logit `z` of a token drawn from `probs`.
fn logit_moments(z: &[f64], probs: &[f64]) -> (f64, f64) {
    let mean: f64 = probs.iter().zip(z).map(|(p, v)| p * v).sum();
    let var: f64 = probs
        .iter()
        .zip(z)
        .map(|(p, v)| p * (v - mean).powi(2))
        .sum();
    (mean, var.sqrt())
}

/// Sampling draws from softmax(logits / temperature), cut to the top-p nucleus: checked on the
/// first generated token of many seeded rows against the distribution computed from the
/// model's own logits. A sampler that ignored the temperature (or top-p) fails: each case
/// first asserts that the distributions it tells apart are far apart for this many draws.
#[test]
fn sampling_follows_temperature_and_top_p() {
    const N: usize = 512;
    let mut g = golden();
    let p = Prompt {
        input_ids: vec![40, 41, 42, 43],
        images: vec![],
    };
    let logits = g.model.forward_prompts(std::slice::from_ref(&p)).unwrap();
    let z: Vec<f64> = logits
        .i((0, p.input_ids.len() - 1))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let mut draw = |temperature: f64, top_p: Option<f64>| -> Vec<usize> {
        let params = GenerationParams {
            max_new_tokens: 1,
            temperature: Some(temperature),
            top_p,
            seed: 11,
            ignore_eos: true,
            ..Default::default()
        };
        let rows = vec![p.clone(); N];
        let out = g.model.generate(&rows, &params).unwrap();
        out.into_iter().map(|t| t[0] as usize).collect()
    };
    let mean_logit = |tokens: &[usize]| tokens.iter().map(|&t| z[t]).sum::<f64>() / N as f64;

    // Temperature: the mean logit of the drawn tokens is that of softmax(z / t).
    // The tiny model's logits span about 1.6, so only low temperatures sharpen them much.
    let temps = [0.1, 0.3, 1.0];
    for &t in &temps {
        let (want, sd) = logit_moments(&z, &softmax_t(&z, t));
        let tol = 5.0 * sd / (N as f64).sqrt();
        for &other in temps.iter().filter(|&&o| o != t) {
            let (elsewhere, _) = logit_moments(&z, &softmax_t(&z, other));
            assert!(
                (elsewhere - want).abs() > 2.0 * tol,
                "temperatures {t} and {other} too close to tell apart with {N} draws"
            );
        }
        let got = mean_logit(&draw(t, None));
        println!("temperature {t}: mean logit {got:.4}, expected {want:.4} ± {tol:.4}");
        assert!(
            (got - want).abs() < tol,
            "temperature {t}: mean logit {got:.4}, expected {want:.4} ± {tol:.4}"
        );
    }

    // Top-p: every drawn token lies in the nucleus (computed with a little slack for
    // rounding), while without the cut N draws would leave it almost surely.
    for (t, top_p) in [(3.0, 0.5), (1.0, 0.3)] {
        let probs = softmax_t(&z, t);
        let kept = nucleus(&probs, top_p + 0.02);
        let outside: f64 = 1.0 - kept.iter().map(|&i| probs[i]).sum::<f64>();
        assert!(
            (1.0 - outside).powi(N as i32) < 1e-6,
            "top-p {top_p} at {t}: only {outside:.3} of the mass is cut; the test could not fail"
        );
        let drawn = draw(t, Some(top_p));
        let strays: Vec<usize> = drawn
            .iter()
            .copied()
            .filter(|d| !kept.contains(d))
            .collect();
        println!(
            "top-p {top_p} at temperature {t}: nucleus of {} tokens of {}, {} strays",
            kept.len(),
            z.len(),
            strays.len()
        );
        assert!(
            strays.is_empty(),
            "tokens outside the top-p nucleus: {strays:?}"
        );
        // Inside the nucleus the draws still follow the tempered distribution.
        let exact = nucleus(&probs, top_p);
        let mass: f64 = exact.iter().map(|&i| probs[i]).sum();
        let mut inner = vec![0.0; z.len()];
        for &i in &exact {
            inner[i] = probs[i] / mass;
        }
        let (want, sd) = logit_moments(&z, &inner);
        let tol = 5.0 * sd / (N as f64).sqrt() + 1e-9;
        let got = mean_logit(&drawn);
        assert!(
            (got - want).abs() < tol,
            "top-p {top_p} at {t}: mean logit {got:.4}, expected {want:.4} ± {tol:.4}"
        );
    }
}

#[test]
fn zero_shot_scores_match_full_forward() {
    let mut g = golden();
    let p = g.prompt();
    let labels: Vec<Vec<u32>> = vec![vec![23], vec![23, 23], vec![30, 31, 32], vec![100, 2]];
    let scores = g.model.score_continuations(&p, &labels, 3).unwrap();

    // Reference: log-likelihood from full forwards over prompt + label.
    for (lab, &(s, n)) in labels.iter().zip(&scores) {
        let mut ids = p.input_ids.clone();
        ids.extend_from_slice(lab);
        let full = Prompt {
            input_ids: ids,
            images: p.images.clone(),
        };
        let logits = g
            .model
            .forward_prompts(&[full])
            .unwrap()
            .squeeze(0)
            .unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
        let n0 = p.input_ids.len();
        let reference: f32 = lab
            .iter()
            .enumerate()
            .map(|(k, &t)| lp[n0 - 1 + k][t as usize])
            .sum();
        println!("label {lab:?}: cached {s:.6} full {reference:.6}");
        assert_eq!(n, lab.len());
        assert!((s - reference).abs() < 1e-4);
    }

    let probs = g.model.classify(&p, &labels, LabelScore::Mean, 2).unwrap();
    let total: f32 = probs.iter().sum();
    assert!((total - 1.0).abs() < 1e-5);
    // Greedy continues with 23, so the label [23] must beat [30, 31, 32].
    assert!(probs[0] > probs[2], "{probs:?}");
}

/// Half precision runs the same code path (GPU dtypes); on CPU only a loose sanity check.
#[test]
fn half_precision_runs() {
    let root = kadr_testkit::shared_dir();
    let st = root.join("golden/qwen2vl_tiny.safetensors");
    let g = golden();
    for dtype in [DType::BF16, DType::F16] {
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&st], dtype, &Device::Cpu).unwrap() };
        let mut m = Qwen2VlModel::new(&g.cfg, vb.pp("weights")).unwrap();
        let p = g.prompt();
        let logits = m
            .forward_prompts(std::slice::from_ref(&p))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let d = max_abs_diff(&logits, &g.t["out.logits"]);
        println!("{dtype:?} logits max abs diff = {d:.3e}");
        assert!(d < 0.1, "{dtype:?}: {d}");
        let params = GenerationParams {
            max_new_tokens: 4,
            ignore_eos: true,
            ..Default::default()
        };
        let out = m.generate(&[p.clone(), p], &params).unwrap();
        assert_eq!(out[0].len(), 4);
        assert_eq!(out[0], out[1]);
    }
}

/// The pad id fills masked slots only: prompts padded with two different ids (the config's eos
/// and another token, as HF's `<|endoftext|>` differs from `<|im_end|>`) give the same logits at
/// every real position, the same greedy tokens and the same continuation scores.
#[test]
fn the_pad_id_changes_nothing_but_the_padding() {
    let mut g = golden();
    let prompts = vec![
        g.prompt(),
        Prompt {
            input_ids: vec![40, 41, 42],
            images: vec![],
        },
    ];
    let params = GenerationParams {
        max_new_tokens: 5,
        ignore_eos: true,
        ..Default::default()
    };
    let labels: Vec<Vec<u32>> = vec![vec![23], vec![30, 31, 32], vec![100, 2]];
    let mut runs = Vec::new();
    for pad in [2u32, 249] {
        g.model.set_pad_token_id(pad);
        let logits = g.model.forward_prompts(&prompts).unwrap();
        let n = prompts[1].input_ids.len();
        let l = logits.dim(1).unwrap();
        let short = logits.i(1).unwrap().narrow(0, l - n, n).unwrap();
        let tokens = g.model.generate(&prompts, &params).unwrap();
        let scores = g
            .model
            .score_continuations(&prompts[0], &labels, 3)
            .unwrap();
        runs.push((logits.i(0).unwrap(), short, tokens, scores));
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!(max_abs_diff(&a.0, &b.0), 0.0, "the unpadded prompt");
    assert_eq!(
        max_abs_diff(&a.1, &b.1),
        0.0,
        "the real positions of the padded prompt"
    );
    assert_eq!(a.2, b.2);
    assert_eq!(a.3, b.3);
}

/// One pooled vector against the reference file's, as f64 lists.
fn pooled_diff(got: &[f32], want: &serde_json::Value) -> f64 {
    let want: Vec<f64> = serde_json::from_value(want.clone()).unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(&g, w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// The VLM embeddings (`EMBEDDING=vlm`): the mean of the decoder's last hidden states over the
/// image tokens and over the whole prompt, against transformers' `hidden_states[-1]` of the
/// same tiny model (`scripts/golden/qwen2vl_hidden_reference.py`). Both prompts run as one
/// left-padded batch, so padding must stay out of the means too.
#[test]
fn pooled_hidden_states_match_hf() {
    let mut g = golden();
    let r: serde_json::Value =
        serde_json::from_str(include_str!("data/qwen2vl_tiny_hidden_reference.json")).unwrap();
    let image = g.prompt();
    assert_eq!(
        serde_json::to_value(&image.input_ids).unwrap(),
        r["image"]["input_ids"]
    );
    let text = Prompt {
        input_ids: serde_json::from_value(r["text"]["input_ids"].clone()).unwrap(),
        images: Vec::new(),
    };
    assert!(
        text.input_ids.len() < image.input_ids.len(),
        "the batch is padded"
    );
    let pooled = g.model.pooled_hidden(&[image, text]).unwrap();
    assert_eq!(pooled.len(), 2);
    let d = [
        pooled_diff(&pooled[0].image, &r["image"]["image_mean"]),
        pooled_diff(&pooled[0].prompt, &r["image"]["prompt_mean"]),
        pooled_diff(&pooled[1].prompt, &r["text"]["prompt_mean"]),
    ];
    println!("pooled hidden max abs diff (image/image, image/prompt, text/prompt) = {d:?}");
    assert!(d.iter().all(|&d| d < 1e-5), "{d:?}");
    assert!(
        pooled[1].image.iter().all(|&x| x == 0.0),
        "no image, no image mean"
    );
    // Not a trivial agreement: the two pools of one prompt differ.
    assert!(pooled_diff(&pooled[0].image, &r["image"]["prompt_mean"]) > 1e-2);
}
