//! The vision-language model as the engine uses it: one loaded Qwen2-VL shared by the index
//! (captions of every indexed image, stored per content hash and model; with `EMBEDDING=vlm`
//! its pooled hidden states as the vector space) and the server (captions and zero-shot labels
//! of uploads). The network is `kadr_models::vlm`.

use crate::settings::Settings;
use anyhow::{Context, Result};
use image::RgbImage;
use kadr_models::vlm::processor::Qwen2Vl;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Images are captioned at this short side (larger ones are scaled down first): about 256 to
/// 350 visual tokens for common aspect ratios, where the processor's own budget would give a
/// 12-megapixel photo some 16,000.
pub const CAPTION_SHORTER: u32 = 448;

/// Which of the VLM's pooled hidden states make an `EMBEDDING=vlm` vector (`VLM_POOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VlmPool {
    /// The mean over the image's tokens: the picture as the decoder sees it.
    #[default]
    Image,
    /// The mean over the whole caption prompt (image, question and template).
    Prompt,
}

impl VlmPool {
    fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Prompt => "prompt",
        }
    }
}

/// A loaded VLM with what its captions depend on besides the image.
pub struct Vlm {
    model: Mutex<Qwen2Vl>,
    /// The model's id and the caption prompt's hash: what its outputs depend on.
    model_prompt: String,
    /// That and the token budget: captions are stored under it.
    id: String,
    caption_tokens: usize,
    /// Captions generated since load (the store keeps them, so a re-index makes none).
    made: AtomicU64,
}

impl Vlm {
    /// The VLM the settings name (`VLM`, `VLM_PATH`), or `None` when none is configured.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>> {
        let Some((repo, local)) = settings.vlm() else {
            return Ok(None);
        };
        let device = crate::embed::parse_device(&settings.device)?;
        let model = kadr_models::vlm::load(&repo, local.as_deref(), &device)?;
        Ok(Some(Self::new(model, settings.caption_tokens)))
    }

    /// Wraps a loaded model; captions get at most `caption_tokens` new tokens.
    pub fn new(model: Qwen2Vl, caption_tokens: usize) -> Self {
        let prompt = blake3::hash(model.caption_prompt.as_bytes()).to_hex();
        let model_prompt = format!("{}/p{}", model.id, &prompt[..8]);
        let id = format!("{model_prompt}/t{caption_tokens}");
        Self {
            model: Mutex::new(model),
            model_prompt,
            id,
            caption_tokens,
            made: AtomicU64::new(0),
        }
    }

    /// What captions are stored under: model, prompt and token budget.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Captions generated since load.
    pub fn captions_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// What VLM embeddings pooled by `pool` are stored under: the model, the prompt and the
    /// pooling (not the token budget: nothing is generated).
    pub fn embedding_id(&self, pool: VlmPool) -> String {
        format!("{}/pool={}", self.model_prompt, pool.name())
    }

    /// VLM embeddings of `images` (each scaled like a caption's, see [`caption_view`]): the
    /// caption prompt's last hidden states pooled by `pool`, L2-normalised, one batched
    /// forward pass per `max_batch` images.
    pub fn embed(&self, images: Vec<RgbImage>, pool: VlmPool) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let views: Vec<RgbImage> = images.into_iter().map(caption_view).collect();
        let pooled = self.lock().embed(&views).context("VLM embedding")?;
        Ok(pooled
            .into_iter()
            .map(|p| {
                let mut v = match pool {
                    VlmPool::Image => p.image,
                    VlmPool::Prompt => p.prompt,
                };
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= n);
                v
            })
            .collect())
    }

    /// The model, for calls other than captions (zero-shot labels); hold it briefly.
    pub fn lock(&self) -> MutexGuard<'_, Qwen2Vl> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Greedy captions of `images`, in batches of the model's `max_batch`, each scaled to
    /// [`CAPTION_SHORTER`] first (see [`caption_view`]).
    pub fn caption(&self, images: Vec<RgbImage>) -> Result<Vec<String>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let views: Vec<RgbImage> = images.into_iter().map(caption_view).collect();
        let out = self
            .lock()
            .caption(&views, self.caption_tokens)
            .context("captioning")?;
        self.made.fetch_add(out.len() as u64, Ordering::Relaxed);
        metrics::counter!("kadr_captions_total").increment(out.len() as u64);
        Ok(out)
    }
}

/// `img` scaled down so that its short side is [`CAPTION_SHORTER`] (an image already that
/// small is kept as it is): what the VLM sees of an image.
pub fn caption_view(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short <= CAPTION_SHORTER {
        return img;
    }
    let scale = CAPTION_SHORTER as f64 / short as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_view_scales_the_short_side_down_only() {
        let view = |w, h| caption_view(RgbImage::new(w, h)).dimensions();
        assert_eq!(view(1200, 900), (597, 448));
        assert_eq!(view(500, 2000), (448, 1792));
        assert_eq!(view(300, 200), (300, 200));
    }
}
