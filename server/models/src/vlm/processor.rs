//! Qwen2-VL input side and the high-level pipeline the app calls.
//!
//! What lives here:
//! - [`smart_resize`] and [`ImageProcessor`]: HF `Qwen2VLImageProcessor` (resize to multiples of
//!   28 within a pixel budget, rescale 1/255, CLIP mean/std, duplicate the frame to the temporal
//!   patch size, flatten to `[N, 1176]` rows in HF's order).
//! - [`chat_prompt`] / [`Qwen2VlTokenizer`]: the Qwen2-VL-Instruct chat template and a wrapper
//!   over `tokenizers::Tokenizer` (read or built by [`super::tokenizer`]) that expands
//!   `<|image_pad|>` to the merged token count.
//! - [`Qwen2Vl`]: loads a model folder and offers `caption` and `zero_shot`.
//!
//! Resampling: HF's slow processor resizes the uint8 image with PIL `BICUBIC` (Keys cubic,
//! a = -0.5, support widened when downscaling). The `image` crate's `CatmullRom` filter is the
//! same kernel with the same support rule, so outputs agree up to rounding (PIL rounds its
//! horizontal pass to uint8 and uses fixed-point weights; `image` keeps f32 between passes):
//! typically 0 or 1 grey level per pixel. HF's newer "fast" (torchvision) processor differs
//! from PIL by a similar amount.

use super::qwen2vl::{Config, ImageInput, LabelScore, Prompt, Qwen2VlModel, VisionConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use std::path::{Path, PathBuf};

#[allow(clippy::excessive_precision)] // HF's literal digits
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// HF's aspect-ratio limit in `smart_resize`: the longer side at most 200 times the shorter.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Why [`smart_resize`] refuses a size; HF raises `ValueError` (or divides by zero) for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeError {
    /// A side (or the factor) is 0.
    Empty { height: usize, width: usize },
    /// The longer side is more than [`MAX_ASPECT_RATIO`] times the shorter.
    AspectRatio { height: usize, width: usize },
}

impl std::fmt::Display for ResizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Empty { height, width } => {
                write!(f, "cannot resize an empty {width}x{height} image")
            }
            Self::AspectRatio { height, width } => write!(
                f,
                "a {width}x{height} image is too elongated for Qwen2-VL: its aspect ratio must \
                 be at most {MAX_ASPECT_RATIO}, got {:.1}",
                height.max(width) as f64 / height.min(width) as f64
            ),
        }
    }
}

impl std::error::Error for ResizeError {}

/// HF `smart_resize` (transformers 4.54 and later): the `(height, width)` closest to the input
/// that are multiples of `factor`, keep the aspect ratio, and hold between `min_pixels` and
/// `max_pixels` pixels. Sides under `factor` are scaled up to the minimum budget (transformers
/// 4.45-4.52 raised for them instead); an aspect ratio over 200 is refused, as in HF.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> std::result::Result<(usize, usize), ResizeError> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(ResizeError::Empty { height, width });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        return Err(ResizeError::AspectRatio { height, width });
    }
    // Python's round() rounds halves to even (round(2.5) == 2), which matters here: 70 px
    // with factor 28 becomes 56, not 84.
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    if h_bar * w_bar > max_pixels {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

/// `img` padded with white (what decoding composites transparency onto) on both sides of its
/// shorter axis until its aspect ratio is at most [`MAX_ASPECT_RATIO`]; `None` when it already
/// is. HF refuses such strips; the pipeline pads them so that a user's 1x300 px upload still
/// gets a caption and labels instead of an error, and nothing is stretched.
pub fn pad_to_aspect_limit(img: &RgbImage) -> Option<RgbImage> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return None;
    }
    let (long, short) = (w.max(h) as f64, w.min(h) as f64);
    if long / short <= MAX_ASPECT_RATIO {
        return None;
    }
    let need = (long / MAX_ASPECT_RATIO).ceil() as u32;
    let (nw, nh) = if w >= h { (w, need) } else { (need, h) };
    let mut out = RgbImage::from_pixel(nw, nh, image::Rgb([255, 255, 255]));
    image::imageops::replace(
        &mut out,
        img,
        i64::from((nw - w) / 2),
        i64::from((nh - h) / 2),
    );
    Some(out)
}

/// HF `Qwen2VLImageProcessor`'s settings. [`Default`] is the class default;
/// [`ImageProcessor::from_preprocessor_config`] reads a model folder's file over it.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub min_pixels: usize,
    /// The class default is `28*28*1280` = 1,003,520 (1280 merged tokens at most); the hub
    /// `preprocessor_config.json` of Qwen2-VL-2B-Instruct says 12,845,056 (16,384 tokens, so a
    /// 1600 px upload becomes about 3,300 tokens), and that is what HF, and so kadr, uses.
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ImageProcessor {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

impl ImageProcessor {
    pub fn from_vision_config(v: &VisionConfig) -> Self {
        Self {
            patch_size: v.patch_size,
            temporal_patch_size: v.temporal_patch_size,
            merge_size: v.spatial_merge_size,
            ..Default::default()
        }
    }

    /// The processor HF builds from `preprocessor_config.json` (`json`), over
    /// [`ImageProcessor::from_vision_config`]: the pixel budget is `min_pixels` / `max_pixels`
    /// when given, else `size.shortest_edge` / `size.longest_edge` (the form newer
    /// transformers write), else the class default, as in transformers 5 (4.57's slow processor
    /// ignores a `size` without `min_pixels`/`max_pixels`, a bug there); patch, merge and
    /// temporal sizes, mean and std when given.
    pub fn from_preprocessor_config(json: &str, v: &VisionConfig) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Size {
            shortest_edge: Option<usize>,
            longest_edge: Option<usize>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            min_pixels: Option<usize>,
            max_pixels: Option<usize>,
            size: Option<Size>,
            patch_size: Option<usize>,
            temporal_patch_size: Option<usize>,
            merge_size: Option<usize>,
            image_mean: Option<[f32; 3]>,
            image_std: Option<[f32; 3]>,
        }
        let f: File = serde_json::from_str(json)?;
        let mut p = Self::from_vision_config(v);
        let (short, long) = f
            .size
            .map_or((None, None), |s| (s.shortest_edge, s.longest_edge));
        p.min_pixels = f.min_pixels.or(short).unwrap_or(p.min_pixels);
        p.max_pixels = f.max_pixels.or(long).unwrap_or(p.max_pixels);
        p.patch_size = f.patch_size.unwrap_or(p.patch_size);
        p.temporal_patch_size = f.temporal_patch_size.unwrap_or(p.temporal_patch_size);
        p.merge_size = f.merge_size.unwrap_or(p.merge_size);
        p.image_mean = f.image_mean.unwrap_or(p.image_mean);
        p.image_std = f.image_std.unwrap_or(p.image_std);
        if p.min_pixels > p.max_pixels || p.max_pixels == 0 {
            bail!(
                "pixel budget {}..{} is empty (min_pixels must not exceed max_pixels)",
                p.min_pixels,
                p.max_pixels
            );
        }
        if (p.patch_size, p.temporal_patch_size, p.merge_size)
            != (v.patch_size, v.temporal_patch_size, v.spatial_merge_size)
        {
            bail!(
                "preprocessor patch {} / temporal {} / merge {} disagree with config.json's vision \
                 config ({} / {} / {})",
                p.patch_size,
                p.temporal_patch_size,
                p.merge_size,
                v.patch_size,
                v.temporal_patch_size,
                v.spatial_merge_size
            );
        }
        Ok(p)
    }

    /// Target `(height, width)` for an input of `height` x `width`.
    pub fn target_size(
        &self,
        height: usize,
        width: usize,
    ) -> std::result::Result<(usize, usize), ResizeError> {
        smart_resize(
            height,
            width,
            self.patch_size * self.merge_size,
            self.min_pixels,
            self.max_pixels,
        )
    }

    /// Bicubic (Catmull-Rom) resize to the smart-resize target; see the module doc.
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.target_size(img.height() as usize, img.width() as usize)?;
        if (h, w) == (img.height() as usize, img.width() as usize) {
            return Ok(img.clone());
        }
        Ok(image::imageops::resize(
            img,
            w as u32,
            h as u32,
            image::imageops::FilterType::CatmullRom,
        ))
    }

    /// Channel-first `[3, H, W]` f32: `(v / 255 - mean) / std`, with HF's precision (rescale
    /// in f64 then cast to f32, normalise in f32).
    pub fn normalize_chw(&self, img: &RgbImage) -> Vec<f32> {
        let hw = img.width() as usize * img.height() as usize;
        // A u8 has 256 values: one lookup table per channel gives the exact same f32s as
        // computing each pixel.
        let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| {
                ((v as f64 * (1.0 / 255.0)) as f32 - self.image_mean[c]) / self.image_std[c]
            })
        });
        let mut out = vec![0f32; 3 * hw];
        let (r, rest) = out.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = lut[0][p[0] as usize];
            g[i] = lut[1][p[1] as usize];
            b[i] = lut[2][p[2] as usize];
        }
        out
    }

    /// HF's patch flattening of one still image `chw` (`[channels, height, width]`): the frame
    /// is repeated `temporal_patch_size` times, then reshaped to
    /// `(gt, tp, c, gh/m, m, p, gw/m, m, p)` and permuted to `(gt, gh/m, gw/m, m, m, c, tp, p, p)`.
    /// Rows therefore walk 2x2 merge blocks (row-major over blocks, row-major inside a block) and
    /// each row is `(c, t, y, x)`. Returns the rows and `grid_thw = (1, gh, gw)`.
    pub fn flatten_patches(
        &self,
        chw: &[f32],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(Vec<f32>, [usize; 3])> {
        let (ps, m, tps) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        if chw.len() != channels * height * width {
            bail!(
                "chw buffer has {} values, expected {channels}x{height}x{width}",
                chw.len()
            );
        }
        if !height.is_multiple_of(ps * m) || !width.is_multiple_of(ps * m) {
            bail!("{height}x{width} is not a multiple of {}", ps * m);
        }
        let (gh, gw) = (height / ps, width / ps);
        let row_len = channels * tps * ps * ps;
        let mut out = vec![0f32; gh * gw * row_len];
        let mut rows = out.chunks_exact_mut(row_len);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (gy, gx) = (bh * m + mh, bw * m + mw);
                        let row = rows.next().expect("row count matches grid");
                        let mut k = 0;
                        for c in 0..channels {
                            for _t in 0..tps {
                                for py in 0..ps {
                                    let src = c * height * width + (gy * ps + py) * width + gx * ps;
                                    row[k..k + ps].copy_from_slice(&chw[src..src + ps]);
                                    k += ps;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((out, [1, gh, gw]))
    }

    /// Full pipeline for one image: `pixel_values` `[t*h*w, 1176]` f32 on `device`. A strip
    /// too elongated for HF is first padded ([`pad_to_aspect_limit`]); images smaller than the
    /// factor are scaled up by `smart_resize` itself, as in HF.
    pub fn preprocess(&self, img: &RgbImage, device: &Device) -> Result<ImageInput> {
        let padded = pad_to_aspect_limit(img);
        let resized = self.resize(padded.as_ref().unwrap_or(img))?;
        let (w, h) = (resized.width() as usize, resized.height() as usize);
        let chw = self.normalize_chw(&resized);
        let (rows, grid) = self.flatten_patches(&chw, 3, h, w)?;
        let n = grid[0] * grid[1] * grid[2];
        let dim = rows.len() / n;
        Ok(ImageInput {
            pixel_values: Tensor::from_vec(rows, (n, dim), device)?,
            grid_thw: grid,
        })
    }
}

/// Qwen2-VL-Instruct chat template for one user turn (default system message, the images
/// first, then the text) with the generation prompt, as `apply_chat_template` renders it.
/// Each image is a single `<|image_pad|>`; [`expand_image_pads`] widens it after tokenization.
pub fn chat_prompt(user_text: &str, n_images: usize) -> String {
    let mut s = String::from(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    );
    for _ in 0..n_images {
        s.push_str("<|vision_start|><|image_pad|><|vision_end|>");
    }
    s.push_str(user_text);
    s.push_str("<|im_end|>\n<|im_start|>assistant\n");
    s
}

/// Replaces the i-th `image_pad` id by `tokens_per_image[i]` copies (what HF's processor does
/// to the text before tokenizing).
pub fn expand_image_pads(
    ids: &[u32],
    image_pad: u32,
    tokens_per_image: &[usize],
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(ids.len() + tokens_per_image.iter().sum::<usize>());
    let mut counts = tokens_per_image.iter();
    for &id in ids {
        if id == image_pad {
            let n = counts
                .next()
                .context("more <|image_pad|> tokens than images")?;
            out.extend(std::iter::repeat_n(image_pad, *n));
        } else {
            out.push(id);
        }
    }
    if counts.next().is_some() {
        bail!("fewer <|image_pad|> tokens than images");
    }
    Ok(out)
}

/// The prompt [`Qwen2Vl::caption`] asks with by default.
pub const CAPTION_PROMPT: &str = "Describe this image in one sentence.";
/// The question [`Qwen2Vl::zero_shot`] scores the labels as answers to by default.
pub const ZERO_SHOT_PROMPT: &str = "What is in this image? Answer with one category.";

pub struct Qwen2VlTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub image_pad_id: u32,
    pub im_end_id: u32,
    /// What HF's processor pads a batch of prompts with: the tokenizer's pad token
    /// (`<|endoftext|>`, 151643, for Qwen2-VL), not an end-of-answer id.
    pub pad_id: u32,
    /// Ids that end an answer: config eos plus `<|im_end|>` and `<|endoftext|>`.
    pub eos_ids: Vec<u32>,
}

impl Qwen2VlTokenizer {
    pub fn from_file(path: &Path, cfg: &Config) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading {}", path.display()))?;
        Self::new(tokenizer, cfg)
    }

    /// The tokenizer of a model folder: `tokenizer.json`, or built from `vocab.json` +
    /// `merges.txt` + the added tokens when there is none ([`super::tokenizer::load`]); the pad
    /// token from `tokenizer_config.json`.
    pub fn from_dir(dir: &Path, cfg: &Config) -> Result<Self> {
        let mut t = Self::new(super::tokenizer::load(dir)?, cfg)?;
        let pad = super::tokenizer::pad_token(dir)?;
        t.pad_id = t
            .tokenizer
            .token_to_id(&pad)
            .with_context(|| format!("the pad token {pad:?} is not in the tokenizer"))?;
        Ok(t)
    }

    /// Wraps `tokenizer`; the pad id is `<|endoftext|>`'s (`Qwen2TokenizerFast`'s default pad
    /// token), or `<|im_end|>`'s for a tokenizer without one.
    pub fn new(tokenizer: tokenizers::Tokenizer, cfg: &Config) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .with_context(|| format!("tokenizer has no {t} token"))
        };
        let image_pad_id = id("<|image_pad|>")?;
        if image_pad_id != cfg.image_token_id {
            bail!(
                "tokenizer <|image_pad|> is {image_pad_id}, config image_token_id is {}",
                cfg.image_token_id
            );
        }
        let im_end_id = id("<|im_end|>")?;
        let mut eos_ids = cfg.eos_token_ids();
        for t in [Some(im_end_id), tokenizer.token_to_id("<|endoftext|>")]
            .into_iter()
            .flatten()
        {
            if !eos_ids.contains(&t) {
                eos_ids.push(t);
            }
        }
        let pad_id = tokenizer.token_to_id("<|endoftext|>").unwrap_or(im_end_id);
        Ok(Self {
            tokenizer,
            image_pad_id,
            im_end_id,
            pad_id,
            eos_ids,
        })
    }

    /// Plain encoding; special tokens written in the text (`<|im_start|>`...) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(anyhow::Error::msg)?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(anyhow::Error::msg)
    }

    /// Token ids of the chat prompt for `user_text` with `images`, image pads expanded.
    pub fn prompt_ids(
        &self,
        user_text: &str,
        images: &[ImageInput],
        cfg: &Config,
    ) -> Result<Vec<u32>> {
        let ids = self.encode(&chat_prompt(user_text, images.len()))?;
        let counts: Vec<usize> = images
            .iter()
            .map(|i| cfg.image_tokens(i.grid_thw))
            .collect();
        expand_image_pads(&ids, self.image_pad_id, &counts)
    }
}

/// Safetensors files of a model folder: the shards named by `model.safetensors.index.json`, or
/// `model.safetensors`. The error lists every missing file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("parsing {}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        let missing: Vec<&str> = files
            .iter()
            .filter(|f| !dir.join(f).exists())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: missing weight shards listed in model.safetensors.index.json: {}",
                dir.display(),
                missing.join(", ")
            );
        }
        return Ok(files.iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: missing weights (model.safetensors or model.safetensors.index.json + shards)",
        dir.display()
    )
}

/// The identity of the model in `dir`: its folder name and the blake3 of every file that
/// changes what it says (config, tokenizer, preprocessor, weights; the weights memory-mapped and
/// hashed on all cores, once per load: not timed here on the real 2B model, which is not here).
fn model_id(dir: &Path, weights: &[PathBuf]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let small = [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "tokenizer_config.json",
    ];
    for name in small {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            h.update(name.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    for w in weights {
        h.update_mmap_rayon(w)
            .with_context(|| format!("hashing {}", w.display()))?;
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "qwen2vl".into());
    Ok(format!("{name}@{}", &h.finalize().to_hex()[..12]))
}

/// Model + tokenizer + image processor: what the app calls.
pub struct Qwen2Vl {
    /// `<folder name>@<first 12 hex of the blake3 of config, tokenizer and weights>`: what a
    /// caption or VLM embedding is stored under, so outputs of other weights never mix.
    pub id: String,
    pub model: Qwen2VlModel,
    pub tokenizer: Qwen2VlTokenizer,
    pub processor: ImageProcessor,
    /// Images per generation batch in [`Qwen2Vl::caption`].
    pub max_batch: usize,
    pub max_new_tokens_cap: usize,
    pub caption_prompt: String,
    pub zero_shot_prompt: String,
    pub label_score: LabelScore,
    /// Labels scored per batched decoder call in [`Qwen2Vl::zero_shot`].
    pub label_chunk: usize,
}

impl Qwen2Vl {
    /// Loads `config.json`, the tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt` +
    /// the added tokens, see [`super::tokenizer`]), `preprocessor_config.json` when present, and
    /// the safetensors weights from `model_dir` (e.g. a `Qwen/Qwen2-VL-2B-Instruct` snapshot).
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = model_dir.join("config.json");
        let mut missing: Vec<String> = Vec::new();
        if !cfg_path.exists() {
            missing.push("config.json".into());
        }
        if let Err(m) = super::tokenizer::check_files(model_dir) {
            missing.push(m);
        }
        let weights = match weight_files(model_dir) {
            Ok(w) => w,
            Err(e) => {
                missing.push(e.to_string());
                Vec::new()
            }
        };
        if !missing.is_empty() {
            bail!(
                "Qwen2-VL model folder {} is incomplete: missing {}",
                model_dir.display(),
                missing.join("; ")
            );
        }
        let cfg = Config::from_json_str(&std::fs::read_to_string(&cfg_path)?)
            .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let tokenizer = Qwen2VlTokenizer::from_dir(model_dir, &cfg)?;
        let processor = match std::fs::read_to_string(model_dir.join("preprocessor_config.json")) {
            Ok(json) => ImageProcessor::from_preprocessor_config(&json, &cfg.vision_config)
                .context("reading preprocessor_config.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ImageProcessor::from_vision_config(&cfg.vision_config)
            }
            Err(e) => return Err(e).context("reading preprocessor_config.json"),
        };
        // SAFETY: the weight files are memory-mapped read-only and must not change while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, dtype, device)? };
        let model = Qwen2VlModel::new(&cfg, vb).context("building Qwen2-VL from the weights")?;
        let mut vl = Self::from_parts(model, tokenizer);
        vl.processor = processor;
        vl.id = model_id(model_dir, &weights)?;
        Ok(vl)
    }

    /// The pipeline over a built model and tokenizer, with the class-default image processor
    /// for the model's vision config; prompts of a batch are padded with the tokenizer's pad id.
    pub fn from_parts(mut model: Qwen2VlModel, tokenizer: Qwen2VlTokenizer) -> Self {
        let processor = ImageProcessor::from_vision_config(&model.config().vision_config);
        model.set_pad_token_id(tokenizer.pad_id);
        Self {
            id: "qwen2vl".into(),
            model,
            tokenizer,
            processor,
            max_batch: 8,
            max_new_tokens_cap: 512,
            caption_prompt: CAPTION_PROMPT.into(),
            zero_shot_prompt: ZERO_SHOT_PROMPT.into(),
            label_score: LabelScore::Sum,
            label_chunk: 32,
        }
    }

    /// Preprocesses `image` and builds the chat prompt for `text` about it.
    pub fn prompt(&self, image: &RgbImage, text: &str) -> Result<Prompt> {
        let img = self.processor.preprocess(image, self.model.device())?;
        let images = vec![img];
        let input_ids = self
            .tokenizer
            .prompt_ids(text, &images, self.model.config())?;
        Ok(Prompt { input_ids, images })
    }

    /// Greedy captions, `max_batch` images per batched generation.
    pub fn caption(&mut self, images: &[RgbImage], max_new_tokens: usize) -> Result<Vec<String>> {
        let params = super::qwen2vl::GenerationParams {
            max_new_tokens: max_new_tokens.min(self.max_new_tokens_cap),
            eos_token_ids: self.tokenizer.eos_ids.clone(),
            ..Default::default()
        };
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.max_batch.max(1)) {
            let prompts = self.caption_prompts(chunk)?;
            for ids in self.model.generate(&prompts, &params)? {
                out.push(self.tokenizer.decode(&ids)?.trim().to_string());
            }
        }
        Ok(out)
    }

    /// VLM embeddings: the pooled last hidden states of each image's caption prompt (see
    /// [`Qwen2VlModel::pooled_hidden`]), `max_batch` prompts per forward pass.
    pub fn embed(&mut self, images: &[RgbImage]) -> Result<Vec<super::qwen2vl::Pooled>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.max_batch.max(1)) {
            let prompts = self.caption_prompts(chunk)?;
            out.extend(self.model.pooled_hidden(&prompts)?);
        }
        Ok(out)
    }

    /// The caption prompt about each image.
    fn caption_prompts(&self, images: &[RgbImage]) -> Result<Vec<Prompt>> {
        images
            .iter()
            .map(|img| self.prompt(img, &self.caption_prompt))
            .collect()
    }

    /// Probability of each label (input order) as the answer to `zero_shot_prompt`: the
    /// model's log-likelihood of the label tokens followed by `<|im_end|>` (so "cat" is not
    /// credited for being the start of "cat food"), reduced per `label_score`, softmaxed over
    /// the labels.
    pub fn zero_shot(&mut self, image: &RgbImage, labels: &[String]) -> Result<Vec<(String, f32)>> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let prompt = self.prompt(image, &self.zero_shot_prompt)?;
        let label_ids = labels
            .iter()
            .map(|l| {
                let mut ids = self.tokenizer.encode(l.trim())?;
                ids.push(self.tokenizer.im_end_id);
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let probs = self
            .model
            .classify(&prompt, &label_ids, self.label_score, self.label_chunk)?;
        Ok(labels.iter().cloned().zip(probs).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's own `smart_resize` (transformers 4.57.1; 5.24.0 gives the same file) over 1,600
    /// sizes from 1 px to 10,000 px a side, under the class default budget and the hub file's:
    /// `tests/data/qwen2vl_smart_resize_reference.json`.
    #[test]
    fn smart_resize_matches_hf() {
        let r: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/data/qwen2vl_smart_resize_reference.json"
        ))
        .unwrap();
        let factor = r["factor"].as_u64().unwrap() as usize;
        let cases = r["cases"].as_array().unwrap();
        let (mut resized, mut refused) = (0, 0);
        for c in cases {
            let n = |i: usize| c[i].as_u64().unwrap() as usize;
            let got = smart_resize(n(0), n(1), factor, n(2), n(3));
            match c[4].as_array() {
                Some(hw) => {
                    let want = (
                        hw[0].as_u64().unwrap() as usize,
                        hw[1].as_u64().unwrap() as usize,
                    );
                    assert_eq!(got, Ok(want), "{c}");
                    resized += 1;
                }
                None => {
                    let err = got.expect_err(&c.to_string());
                    assert_eq!(
                        err,
                        ResizeError::AspectRatio {
                            height: n(0),
                            width: n(1)
                        }
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(resized + refused, 3200);
        assert!(refused > 100 && resized > 2000);
    }

    /// Hand-worked cases of the formula, for a reader; sides under 28 included, since HF (from
    /// transformers 4.54) scales them up instead of raising.
    #[test]
    fn smart_resize_worked_examples() {
        let f = |h, w| smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280).unwrap();
        // Already multiples of 28 and inside the budget: unchanged.
        assert_eq!(f(448, 448), (448, 448));
        // 480/28 = 17.14 -> 17*28; 640/28 = 22.86 -> 23*28.
        assert_eq!(f(480, 640), (476, 644));
        // Halves round to even like Python: 42/28 = 1.5 -> 2, 70/28 = 2.5 -> 2, 98/28 = 3.5 -> 4,
        // 126/28 = 4.5 -> 4.
        assert_eq!(f(42, 42), (56, 56));
        assert_eq!(f(70, 70), (56, 56));
        assert_eq!(f(98, 126), (112, 112));
        // Over budget: beta = sqrt(6e6 / 1003520) = 2.4452; floor(2000/beta/28) = 29,
        // floor(3000/beta/28) = 43.
        assert_eq!(f(2000, 3000), (812, 1204));
        // 1080p: beta = sqrt(2073600/1003520) = 1.4375; floor(26.83) = 26, floor(47.70) = 47.
        assert_eq!(f(1080, 1920), (728, 1316));
        // Under budget: 28x28 < 3136; beta = sqrt(3136/600) = 2.2862; ceil(1.63) = 2, ceil(2.45) = 3.
        assert_eq!(f(20, 30), (56, 84));
        // A 1x1 image: beta = 56, up to the minimum 56x56.
        assert_eq!(f(1, 1), (56, 56));
        // Extreme aspect ratio: 10/28 rounds to 0; beta = sqrt(3136/19000); ceil -> 1 and 28.
        assert_eq!(f(10, 1900), (28, 784));
        assert_eq!(
            smart_resize(10, 2100, 28, 3136, 1003520),
            Err(ResizeError::AspectRatio {
                height: 10,
                width: 2100
            })
        );
        let msg = smart_resize(1, 300, 28, 3136, 1003520)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1x300") || msg.contains("300x1"), "{msg}");
        assert!(msg.contains("200") && msg.contains("300.0"), "{msg}");
        assert_eq!(
            smart_resize(0, 5, 28, 3136, 1003520),
            Err(ResizeError::Empty {
                height: 0,
                width: 5
            })
        );
    }

    /// Strips HF refuses are padded (white, centred) to the limit, then preprocess like any
    /// image; tiny images are scaled up by smart_resize; nothing errors.
    #[test]
    fn tiny_and_elongated_images_preprocess() {
        let p = ImageProcessor::default();
        let strip = RgbImage::from_pixel(300, 1, image::Rgb([0, 0, 0]));
        let padded = pad_to_aspect_limit(&strip).unwrap();
        assert_eq!(padded.dimensions(), (300, 2));
        // One row to add: the image keeps row 0 (centring rounds down), white below it.
        assert_eq!(padded.get_pixel(0, 0), &image::Rgb([0, 0, 0]));
        assert_eq!(padded.get_pixel(0, 1), &image::Rgb([255, 255, 255]));
        let tall = RgbImage::from_pixel(3, 1000, image::Rgb([9, 9, 9]));
        let padded = pad_to_aspect_limit(&tall).unwrap();
        assert_eq!(padded.dimensions(), (5, 1000));
        assert_eq!(padded.get_pixel(1, 500), &image::Rgb([9, 9, 9]));
        assert_eq!(padded.get_pixel(0, 500), &image::Rgb([255, 255, 255]));
        let (w, h) = padded.dimensions();
        assert!(f64::from(h) / f64::from(w) <= MAX_ASPECT_RATIO);
        assert!(pad_to_aspect_limit(&RgbImage::new(200, 1)).is_none());
        assert!(pad_to_aspect_limit(&RgbImage::new(20, 30)).is_none());
        for (w, h) in [(300, 1), (1, 1), (3, 1000), (27, 5), (10_000, 3)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
            let out = p.preprocess(&img, &Device::Cpu).unwrap();
            let [t, gh, gw] = out.grid_thw;
            assert_eq!(t, 1);
            assert!(
                gh >= 2 && gw >= 2 && gh % 2 == 0 && gw % 2 == 0,
                "{w}x{h}: {gh}x{gw}"
            );
            assert!(gh * gw * 14 * 14 >= p.min_pixels, "{w}x{h}");
        }
    }

    #[test]
    fn the_preprocessor_config_sets_the_pixel_budget() {
        let v = VisionConfig::default();
        let hub = std::fs::read_to_string(
            kadr_testkit::shared_dir().join("qwen2vl-2b-instruct/preprocessor_config.json"),
        )
        .unwrap();
        let p = ImageProcessor::from_preprocessor_config(&hub, &v).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (3136, 12_845_056));
        assert_eq!(p.image_mean, CLIP_MEAN);
        // A 2000x3000 photo is only rounded to multiples of 28 under the hub budget (6 Mpx <
        // 12.8 Mpx); the class default would shrink it to 812x1204.
        assert_eq!(p.target_size(2000, 3000), Ok((1988, 2996)));
        // The nested form newer files write, and min/max_pixels over it.
        let nested = r#"{"size": {"shortest_edge": 1000, "longest_edge": 200000}}"#;
        let p = ImageProcessor::from_preprocessor_config(nested, &v).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (1000, 200_000));
        let both =
            r#"{"size": {"shortest_edge": 1000, "longest_edge": 200000}, "max_pixels": 300000}"#;
        let p = ImageProcessor::from_preprocessor_config(both, &v).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (1000, 300_000));
        // Nothing said: the class default.
        let p = ImageProcessor::from_preprocessor_config("{}", &v).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (3136, 1_003_520));
        // Contradictions are refused with a reason.
        let err =
            ImageProcessor::from_preprocessor_config(r#"{"min_pixels": 10, "max_pixels": 5}"#, &v)
                .unwrap_err()
                .to_string();
        assert!(err.contains("min_pixels"), "{err}");
        let err = ImageProcessor::from_preprocessor_config(r#"{"patch_size": 16}"#, &v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("disagree"), "{err}");
    }

    /// Numpy-style reference: reshape a row-major array and permute its axes, by index
    /// arithmetic only (independent of the loop in `flatten_patches`).
    fn reshape_permute(data: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let total: usize = shape.iter().product();
        let mut out = Vec::with_capacity(total);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..total {
            let src: usize = idx
                .iter()
                .enumerate()
                .map(|(k, &i)| i * strides[perm[k]])
                .sum();
            out.push(data[src]);
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < out_shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        out
    }

    #[test]
    fn flatten_patches_in_hf_order() {
        let p = ImageProcessor::default();
        let (c, h, w) = (3usize, 56usize, 84usize); // 4 x 6 patch grid, like the golden
                                                    // Each value encodes its (c, y, x).
        let enc = |c: usize, y: usize, x: usize| (c * 1_000_000 + y * 1000 + x) as f32;
        let mut chw = vec![0f32; c * h * w];
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    chw[ci * h * w + y * w + x] = enc(ci, y, x);
                }
            }
        }
        let (rows, grid) = p.flatten_patches(&chw, c, h, w).unwrap();
        assert_eq!(grid, [1, 4, 6]);
        assert_eq!(rows.len(), 24 * 1176);
        let at = |r: usize, col: usize| rows[r * 1176 + col];
        // Row order walks 2x2 blocks: rows 0..4 are patches (0,0),(0,1),(1,0),(1,1); row 4 is
        // (0,2); a block row holds 3 blocks, so row 12 is patch (2,0).
        assert_eq!(at(0, 0), enc(0, 0, 0));
        assert_eq!(at(1, 0), enc(0, 0, 14));
        assert_eq!(at(2, 0), enc(0, 14, 0));
        assert_eq!(at(3, 0), enc(0, 14, 14));
        assert_eq!(at(4, 0), enc(0, 0, 28));
        assert_eq!(at(12, 0), enc(0, 28, 0));
        // Columns are (c, t, y, x): 392 per channel, 196 per frame, 14 per row.
        // Row 3, c=1, t=1, py=5, px=7 -> pixel (1, 14+5, 14+7).
        assert_eq!(at(3, 392 + 196 + 5 * 14 + 7), enc(1, 19, 21));
        // Both frames are the same image.
        assert_eq!(
            at(23, 2 * 392 + 13 * 14 + 13),
            at(23, 2 * 392 + 196 + 13 * 14 + 13)
        );
        // Last row is patch (3,5): bottom-right pixel of channel 2, frame 1.
        assert_eq!(at(23, 1175), enc(2, 55, 83));

        // Whole buffer against HF's reshape/permute done generically.
        let (tps, ps, m) = (2, 14, 2);
        let mut frames = Vec::with_capacity(tps * chw.len());
        for _ in 0..tps {
            frames.extend_from_slice(&chw);
        }
        let shape = [1, tps, c, h / ps / m, m, ps, w / ps / m, m, ps];
        let reference = reshape_permute(&frames, &shape, &[0, 3, 6, 4, 7, 2, 1, 5, 8]);
        assert_eq!(rows, reference);
    }

    #[test]
    fn preprocess_normalizes_and_resizes() {
        let p = ImageProcessor::default();
        let img = RgbImage::from_pixel(60, 50, image::Rgb([255, 0, 128]));
        let out = p.preprocess(&img, &Device::Cpu).unwrap();
        // smart_resize(50, 60) = (56, 56) -> 4x4 patches.
        assert_eq!(out.grid_thw, [1, 4, 4]);
        let v: Vec<Vec<f32>> = out.pixel_values.to_vec2().unwrap();
        assert_eq!(v.len(), 16);
        let expect = |c: usize, x: f32| (x / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        assert!((v[5][0] - expect(0, 255.0)).abs() < 1e-5);
        assert!((v[5][392] - expect(1, 0.0)).abs() < 1e-5);
        assert!((v[5][784] - expect(2, 128.0)).abs() < 1e-5);
    }

    #[test]
    fn chat_prompt_and_pad_expansion() {
        let s = chat_prompt("Hi", 1);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = expand_image_pads(&[1, 9, 2, 9, 3], 9, &[2, 3]).unwrap();
        assert_eq!(ids, vec![1, 9, 9, 2, 9, 9, 9, 3]);
        assert!(expand_image_pads(&[9], 9, &[]).is_err());
        assert!(expand_image_pads(&[1], 9, &[4]).is_err());
    }

    #[test]
    fn load_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("qwen2vl-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = match Qwen2Vl::load(&dir, &Device::Cpu, DType::F32) {
            Ok(_) => panic!("load of an empty folder succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains("tokenizer.json"), "{err}");
        assert!(err.contains("vocab.json + merges.txt"), "{err}");
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
