//! [`Qwen2VlModel`]: logits for whole prompts, batched greedy / sampled generation (left
//! padding + attention mask, one forward per step for the whole batch), and log-likelihood
//! scoring of continuations (used for zero-shot labels).

use super::config::*;
use super::rope::rope_index;
use super::text::*;
use super::vision::*;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::generation::LogitsProcessor;

/// One preprocessed image: `pixel_values` `[t*h*w, C*T*P*P]` (any device/dtype) and its grid.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub pixel_values: Tensor,
    pub grid_thw: [usize; 3],
}

/// A prompt at the token level: ids with every image already expanded to its
/// `<|vision_start|>` + `image_token_id` x n + `<|vision_end|>` run, and the images in order.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub input_ids: Vec<u32>,
    pub images: Vec<ImageInput>,
}

#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    /// `None` (or ~0) = greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub eos_token_ids: Vec<u32>,
    /// Keep generating past eos (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: None,
            top_p: None,
            seed: 299792458,
            eos_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// A prompt's last hidden states, mean-pooled ([`Qwen2VlModel::pooled_hidden`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pooled {
    /// The mean over the image tokens: the image as the decoder sees it.
    pub image: Vec<f32>,
    /// The mean over every token of the prompt (image, question and template).
    pub prompt: Vec<f32>,
}

/// How a multi-token label's log-probabilities are combined before the softmax over labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelScore {
    /// Log-probability of the whole answer (label tokens plus the closing `<|im_end|>` the
    /// caller appends): the probability of exactly that answer.
    #[default]
    Sum,
    /// Mean per-token log-probability (length normalised).
    Mean,
}

/// Per-row bookkeeping of a batch in the KV cache.
#[derive(Debug, Clone)]
struct BatchState {
    /// `[B][Lk]`: false for left padding (and right padding of scored continuations).
    key_valid: Vec<Vec<bool>>,
    /// Per row: position of padded index `p` is `p + delta`.
    deltas: Vec<i64>,
}

impl BatchState {
    fn repeat(&self, n: usize) -> Self {
        Self {
            key_valid: vec![self.key_valid[0].clone(); n],
            deltas: vec![self.deltas[0]; n],
        }
    }
}

pub struct Qwen2VlModel {
    vision: VisionModel,
    text: TextModel,
    cfg: Config,
    device: Device,
    dtype: DType,
    /// Fills left padding of prompts and right padding of scored continuations (masked).
    pad_id: u32,
}

impl Qwen2VlModel {
    /// `vb` is rooted at the checkpoint's top level. Both key layouts are accepted:
    /// hub (`model.*`, `visual.*`, `lm_head.*`) and newer transformers
    /// (`model.language_model.*`, `model.visual.*`). `lm_head` falls back to the tied embedding.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (vb_text, vb_vis) = if vb.contains_tensor("model.language_model.embed_tokens.weight") {
            (vb.pp("model.language_model"), vb.pp("model.visual"))
        } else {
            (vb.pp("model"), vb.pp("visual"))
        };
        let lm_head = vb
            .contains_tensor("lm_head.weight")
            .then(|| vb.pp("lm_head"));
        Ok(Self {
            vision: VisionModel::new(&cfg.vision_config, vb_vis)?,
            text: TextModel::new(cfg, vb_text, lm_head)?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            pad_id: cfg
                .pad_token_id
                .or_else(|| cfg.eos_token_ids().first().copied())
                .unwrap_or(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Vision-tower output `[sum(t*h*w)/merge^2, hidden]` for concatenated patch rows.
    pub fn vision_embeds(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grids)
    }

    pub fn clear_kv_cache(&mut self) {
        self.text.clear_kv_cache()
    }

    /// The id padding is filled with: HF's processor uses the tokenizer's pad token
    /// (`<|endoftext|>` for Qwen2-VL); until this is called, `pad_token_id` of the config or its
    /// first eos id. Padding is masked, so this changes no result, only what the padded rows hold.
    pub fn set_pad_token_id(&mut self, id: u32) {
        self.pad_id = id;
    }

    /// Additive mask `[B, 1, Lq, Lk]` for the last `lq` entries of `state`. A query may see
    /// valid keys up to itself; a padding query sees only itself, so no row is all `-inf`
    /// (no NaN enters the cache) and real rows never see padding. `None` when nothing is masked.
    fn build_mask(&self, state: &BatchState, lq: usize) -> Result<Option<Tensor>> {
        let b = state.key_valid.len();
        let lk = state.key_valid[0].len();
        let past = lk - lq;
        if lq == 1 && state.key_valid.iter().all(|r| r.iter().all(|&v| v)) {
            return Ok(None);
        }
        let mut m = vec![0f32; b * lq * lk];
        for (bi, row) in state.key_valid.iter().enumerate() {
            for i in 0..lq {
                let qp = past + i;
                let off = (bi * lq + i) * lk;
                for (j, &valid) in row.iter().enumerate() {
                    if !((j <= qp && valid) || j == qp) {
                        m[off + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, lq, lk), &self.device)?
            .to_dtype(self.dtype)
            .map(Some)
    }

    /// Runs the vision tower and the decoder over left-padded prompts, filling the KV cache.
    /// Returns logits `[B, L, V]` (`all_logits`) or `[B, V]` for the last position.
    fn prefill(&mut self, prompts: &[Prompt], all_logits: bool) -> Result<(Tensor, BatchState)> {
        let (hidden, state) = self.prefill_hidden(prompts)?;
        let l = hidden.dim(1)?;
        let logits = if all_logits {
            self.text.lm_head.forward(&hidden)?
        } else {
            // Left padding puts every row's last real token in the last column.
            self.text
                .lm_head
                .forward(&hidden.i((.., l - 1, ..))?.contiguous()?)?
        };
        Ok((logits, state))
    }

    /// The decoder's last hidden states `[B, L, H]` after the final norm (HF's
    /// `hidden_states[-1]`) over left-padded prompts, filling the KV cache.
    fn prefill_hidden(&mut self, prompts: &[Prompt]) -> Result<(Tensor, BatchState)> {
        self.text.clear_kv_cache();
        if prompts.is_empty() || prompts.iter().any(|p| p.input_ids.is_empty()) {
            candle_core::bail!("prefill needs at least one non-empty prompt");
        }
        let b = prompts.len();
        let l = prompts.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let images: Vec<&ImageInput> = prompts.iter().flat_map(|p| p.images.iter()).collect();
        // All images of the batch go through the tower together; attention stays per image.
        let vision = if images.is_empty() {
            None
        } else {
            let pv = images
                .iter()
                .map(|i| i.pixel_values.to_device(&self.device))
                .collect::<Result<Vec<_>>>()?;
            let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
            Some(self.vision.forward(&Tensor::cat(&pv, 0)?, &grids)?)
        };
        let n_vis = match &vision {
            Some(v) => v.dim(0)?,
            None => 0,
        };

        let pad = self.pad_id;
        let mut ids = Vec::with_capacity(b * l);
        let mut gather = Vec::with_capacity(b * l);
        let mut pos = vec![1f32; 3 * b * l]; // HF leaves padding at position 1
        let mut state = BatchState {
            key_valid: Vec::with_capacity(b),
            deltas: Vec::with_capacity(b),
        };
        let mut vis_k = 0usize;
        for (bi, p) in prompts.iter().enumerate() {
            let npad = l - p.input_ids.len();
            let grids: Vec<[usize; 3]> = p.images.iter().map(|i| i.grid_thw).collect();
            let (rp, delta) = rope_index(&p.input_ids, &grids, &self.cfg, l)?;
            state.deltas.push(delta);
            state.key_valid.push((0..l).map(|j| j >= npad).collect());
            for j in 0..l {
                let flat = bi * l + j;
                if j < npad {
                    ids.push(pad);
                    gather.push(flat as u32);
                    continue;
                }
                let id = p.input_ids[j - npad];
                if id as usize >= self.cfg.vocab_size {
                    candle_core::bail!("token id {id} out of vocabulary");
                }
                ids.push(id);
                if id == self.cfg.image_token_id {
                    // HF masked_scatter: image embeddings fill image tokens in row-major order.
                    gather.push((b * l + vis_k) as u32);
                    vis_k += 1;
                } else {
                    gather.push(flat as u32);
                }
                for (axis, a) in rp.iter().enumerate() {
                    pos[(axis * b + bi) * l + j] = a[j - npad] as f32;
                }
            }
        }
        if vis_k != n_vis {
            candle_core::bail!("{vis_k} image tokens but the images give {n_vis} embeddings");
        }
        let ids = Tensor::from_vec(ids, (b * l,), &self.device)?;
        let mut embeds = self.text.embed_tokens.forward(&ids)?;
        if let Some(v) = vision {
            // One gather replaces image-token rows by vision rows; works on every device.
            let table = Tensor::cat(&[&embeds, &v.to_dtype(embeds.dtype())?], 0)?;
            let idx = Tensor::from_vec(gather, (b * l,), &self.device)?;
            embeds = table.index_select(&idx, 0)?;
        }
        let embeds = embeds.reshape((b, l, self.cfg.hidden_size))?;
        let pos = Tensor::from_vec(pos, (3, b, l), &self.device)?;
        let mask = self.build_mask(&state, l)?;
        let hidden = self.text.forward_hidden(&embeds, &pos, mask.as_ref())?;
        Ok((hidden, state))
    }

    /// Mean-pooled last hidden states (after the final norm, HF's `hidden_states[-1]`) of each
    /// prompt, one batched forward pass for all of them: over its image tokens
    /// ([`Pooled::image`], zeros for a prompt without images) and over all its tokens
    /// ([`Pooled::prompt`]). Padding never enters a mean; f32 whatever the model's dtype.
    pub fn pooled_hidden(&mut self, prompts: &[Prompt]) -> Result<Vec<Pooled>> {
        let (hidden, _) = self.prefill_hidden(prompts)?;
        self.text.clear_kv_cache();
        let (b, l, _) = hidden.dims3()?;
        // Row 2i averages prompt i's image tokens, row 2i+1 all its tokens: one batched matmul
        // [B, 2, L] x [B, L, H] does every mean on the device.
        let mut w = vec![0f32; b * 2 * l];
        for (bi, p) in prompts.iter().enumerate() {
            let npad = l - p.input_ids.len();
            let n_img = p
                .input_ids
                .iter()
                .filter(|&&t| t == self.cfg.image_token_id)
                .count();
            for (j, &t) in p.input_ids.iter().enumerate() {
                if t == self.cfg.image_token_id {
                    w[(bi * 2) * l + npad + j] = 1.0 / n_img as f32;
                }
                w[(bi * 2 + 1) * l + npad + j] = 1.0 / p.input_ids.len() as f32;
            }
        }
        let w = Tensor::from_vec(w, (b, 2, l), &self.device)?;
        let pooled: Vec<Vec<Vec<f32>>> = w
            .matmul(&hidden.to_dtype(DType::F32)?.contiguous()?)?
            .to_vec3()?;
        Ok(pooled
            .into_iter()
            .map(|mut rows| {
                let prompt = rows.pop().unwrap_or_default();
                let image = rows.pop().unwrap_or_default();
                Pooled { image, prompt }
            })
            .collect())
    }

    /// Appends `tokens` (`[B][Lq]`, equal lengths; `valid` marks padding) after the cached
    /// batch. Returns logits `[B, Lq, V]`.
    fn extend(
        &mut self,
        tokens: &[Vec<u32>],
        valid: &[Vec<bool>],
        state: &mut BatchState,
    ) -> Result<Tensor> {
        let b = tokens.len();
        let lq = tokens[0].len();
        let past = state.key_valid[0].len();
        let mut pos = vec![0f32; 3 * b * lq];
        for bi in 0..b {
            state.key_valid[bi].extend_from_slice(&valid[bi]);
            for i in 0..lq {
                let p = (past + i) as i64 + state.deltas[bi];
                for axis in 0..3 {
                    pos[(axis * b + bi) * lq + i] = p as f32;
                }
            }
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, lq), &self.device)?;
        let embeds = self.text.embed_tokens.forward(&ids)?;
        let pos = Tensor::from_vec(pos, (3, b, lq), &self.device)?;
        let mask = self.build_mask(state, lq)?;
        let hidden = self.text.forward_hidden(&embeds, &pos, mask.as_ref())?;
        self.text.lm_head.forward(&hidden)
    }

    /// Logits `[B, L, V]` at every position of the (left-padded) prompts.
    pub fn forward_prompts(&mut self, prompts: &[Prompt]) -> Result<Tensor> {
        let (logits, _) = self.prefill(prompts, true)?;
        self.text.clear_kv_cache();
        Ok(logits)
    }

    /// Batched generation: one prefill for all prompts (left padded), then one decoder step per
    /// new token for the whole batch. Returns the new tokens of each prompt, eos excluded.
    pub fn generate(&mut self, prompts: &[Prompt], p: &GenerationParams) -> Result<Vec<Vec<u32>>> {
        let b = prompts.len();
        let mut out = vec![Vec::new(); b];
        if b == 0 || p.max_new_tokens == 0 {
            return Ok(out);
        }
        let greedy = p.temperature.is_none_or(|t| t < 1e-7);
        let mut procs: Vec<LogitsProcessor> = (0..b)
            .map(|i| LogitsProcessor::new(p.seed.wrapping_add(i as u64), p.temperature, p.top_p))
            .collect();
        let (mut logits, mut state) = self.prefill(prompts, false)?; // [B, V]
        let mut done = vec![false; b];
        for step in 0..p.max_new_tokens {
            let next: Vec<u32> = if greedy {
                // One device-side argmax for the batch instead of B host round trips.
                logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?
            } else {
                let logits = logits.to_dtype(DType::F32)?;
                (0..b)
                    .map(|i| procs[i].sample(&logits.i(i)?))
                    .collect::<Result<Vec<_>>>()?
            };
            for i in 0..b {
                if done[i] {
                    continue;
                }
                if !p.ignore_eos && p.eos_token_ids.contains(&next[i]) {
                    done[i] = true;
                } else {
                    out[i].push(next[i]);
                }
            }
            if done.iter().all(|&d| d) || step + 1 == p.max_new_tokens {
                break;
            }
            // Finished rows keep decoding (their tokens are ignored) so the batch stays square.
            let toks: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            let valid = vec![vec![true]; b];
            logits = self.extend(&toks, &valid, &mut state)?.squeeze(1)?;
        }
        self.text.clear_kv_cache();
        Ok(out)
    }

    /// Log-likelihood of each continuation after `prompt`: `(sum of log-probs, token count)`.
    /// The prompt (and its images) is encoded once; its KV cache is then replicated for up to
    /// `chunk` continuations at a time, which run as one right-padded batch.
    pub fn score_continuations(
        &mut self,
        prompt: &Prompt,
        continuations: &[Vec<u32>],
        chunk: usize,
    ) -> Result<Vec<(f32, usize)>> {
        if let Some(bad) = continuations
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!("token id {bad} out of vocabulary");
        }
        let (last, state) = self.prefill(std::slice::from_ref(prompt), false)?;
        let first_lp: Vec<f32> =
            candle_nn::ops::log_softmax(&last.to_dtype(DType::F32)?, D::Minus1)?
                .squeeze(0)?
                .to_vec1()?;
        let snap = self.text.kv_snapshot();
        let pad = self.pad_id;
        let mut out = Vec::with_capacity(continuations.len());
        for group in continuations.chunks(chunk.max(1)) {
            let mut scores: Vec<(f32, usize)> = group
                .iter()
                .map(|c| (c.first().map_or(0.0, |&t| first_lp[t as usize]), c.len()))
                .collect();
            let maxn = group.iter().map(|c| c.len()).max().unwrap_or(0);
            if maxn > 1 {
                let n = group.len();
                let lq = maxn - 1;
                self.text.set_kv_repeated(&snap, n)?;
                let mut st = state.repeat(n);
                let mut toks = Vec::with_capacity(n);
                let mut valid = Vec::with_capacity(n);
                let mut targets = Vec::with_capacity(n * lq);
                for c in group {
                    let k = c.len().saturating_sub(1);
                    let mut t: Vec<u32> = c[..k].to_vec();
                    t.resize(lq, pad);
                    toks.push(t);
                    valid.push((0..lq).map(|i| i < k).collect::<Vec<_>>());
                    targets.extend((0..lq).map(|i| if i < k { c[i + 1] } else { 0 }));
                }
                let logits = self.extend(&toks, &valid, &mut st)?.to_dtype(DType::F32)?;
                let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                let tgt = Tensor::from_vec(targets, (n, lq, 1), &self.device)?;
                let picked: Vec<Vec<f32>> = lp.gather(&tgt, 2)?.squeeze(2)?.to_vec2()?;
                for ((s, c), row) in scores.iter_mut().zip(group).zip(picked) {
                    s.0 += row.iter().take(c.len().saturating_sub(1)).sum::<f32>();
                }
            }
            out.extend(scores);
        }
        self.text.clear_kv_cache();
        Ok(out)
    }

    /// Zero-shot classification at the id level: probability of each label (softmax over
    /// labels of the reduced log-likelihood of its tokens as the answer to `prompt`).
    pub fn classify(
        &mut self,
        prompt: &Prompt,
        labels: &[Vec<u32>],
        reduce: LabelScore,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let scores = self.score_continuations(prompt, labels, chunk)?;
        let s: Vec<f32> = scores
            .iter()
            .map(|&(sum, n)| match reduce {
                LabelScore::Sum => sum,
                LabelScore::Mean => sum / n.max(1) as f32,
            })
            .collect();
        Ok(softmax(&s))
    }
}

/// Numerically stable softmax of a small host vector.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = xs.iter().map(|&x| (x - max).exp()).collect();
    let z: f32 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}
