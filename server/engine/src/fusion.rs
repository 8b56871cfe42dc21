//! Fusion: one vector per image from its visual embedding and the embedding of its text, and
//! what that text is. Everything about how the two spaces combine lives here; `text` embeds
//! text, `embed` embeds pixels, `workspace` stores and indexes the results.
//!
//! The fused vector is `normalise(concat(w·v, (1−w)·t))` with `v` (visual) and `t` (text) each
//! L2-normalised first. Its length before the final normalisation is `√(w² + (1−w)²)` for every
//! image, so the cosine of two fused vectors is
//!
//! `cos(a, b) = (w²·cos_v(a, b) + (1−w)²·cos_t(a, b)) / (w² + (1−w)²)`:
//!
//! a fixed blend of the two similarities, with the visual one weighted `w² : (1−w)²` (at the
//! default `w` = 0.7 that is 49 : 9, about 5 : 1). `w` = 1 is the visual space, `w` = 0 the
//! text space.

use crate::text::TextEmbedder;
use anyhow::{bail, Result};
use std::str::FromStr;
use std::sync::Arc;

/// Which vectors a workspace indexes and searches (`EMBEDDING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbeddingKind {
    /// The backbone's embedding alone; the default.
    Visual,
    /// Visual ⊕ text, see the module documentation.
    Fused,
    /// The VLM's pooled hidden states (`crate::vlm`; needs a VLM).
    Vlm,
}

impl FromStr for EmbeddingKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "visual" => Ok(Self::Visual),
            "fused" => Ok(Self::Fused),
            "vlm" => Ok(Self::Vlm),
            _ => bail!("unknown EMBEDDING {s:?}: use visual, fused or vlm"),
        }
    }
}

/// The backbone's top ImageNet labels as text, most probable first ("espresso, cup, coffee
/// mug, …"): an image's text without a VLM. `None` when there is nothing to say (a classifier
/// that is not ImageNet-1k).
pub fn image_text(labels: &[&str]) -> Option<String> {
    (!labels.is_empty()).then(|| labels.join(", "))
}

/// Between a caption and the labels in an image's text.
pub const CAPTION_SEPARATOR: &str = "\n";

/// An image's text with a VLM: its caption first, then the labels when it has any
/// ("A cup of coffee on a table.\nespresso, cup, coffee mug"). `None` until it has a caption.
/// The store computes the same text in SQL (`store::TextKey`).
pub fn image_text_with(caption: Option<&str>, labels: Option<&str>) -> Option<String> {
    let caption = caption?;
    Some(match labels {
        Some(l) => format!("{caption}{CAPTION_SEPARATOR}{l}"),
        None => caption.to_string(),
    })
}

/// An image's text: [`image_text_with`] when captions are made (`captioned`), else the labels.
pub fn text_of(captioned: bool, caption: Option<&str>, labels: Option<&str>) -> Option<String> {
    if captioned {
        image_text_with(caption, labels)
    } else {
        labels.map(str::to_string)
    }
}

/// The cosine of two fused vectors from their visual and text cosines (see the module
/// documentation): what [`fuse`] makes an index compute, for scoring without building one.
pub fn blend(cos_visual: f32, cos_text: f32, w: f32) -> f32 {
    let (a, b) = (w * w, (1.0 - w) * (1.0 - w));
    (a * cos_visual + b * cos_text) / (a + b)
}

/// Checks a fusion weight: `w` is the visual share, 0–1.
pub fn check_weight(w: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&w) {
        bail!("a fusion weight is the visual share, within 0..1, not {w}");
    }
    Ok(())
}

/// `normalise(concat(w·visual, (1−w)·text))`, both parts L2-normalised first.
pub fn fuse(visual: &[f32], text: &[f32], w: f32) -> Vec<f32> {
    let part = |v: &[f32], scale: f32| -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x * scale / n).collect()
    };
    let mut out = part(visual, w);
    out.extend(part(text, 1.0 - w));
    let n = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    out.iter_mut().for_each(|x| *x /= n);
    out
}

/// The id of a fused space: the model ids (the captioning VLM's too, when the texts have
/// captions) and the weight, so vectors of different models or weights never share an index.
pub fn fused_model_id(visual_id: &str, text_id: &str, vlm: Option<&str>, w: f32) -> String {
    match vlm {
        None => format!("fused({visual_id}+{text_id},w={w:.2})"),
        Some(vlm) => format!("fused({visual_id}+{text_id}+{vlm},w={w:.2})"),
    }
}

/// A text embedder with the weight it is fused at.
pub struct Fusion {
    /// Shared with text search, which embeds its sentences with the same model.
    pub text: Arc<TextEmbedder>,
    pub weight: f32,
}

impl Fusion {
    /// Checks the weight: `w` is the visual share, 0–1.
    pub fn new(text: TextEmbedder, weight: f32) -> Result<Self> {
        check_weight(weight)?;
        Ok(Self {
            text: Arc::new(text),
            weight,
        })
    }

    /// The fused space's id for a visual model, with texts captioned by `vlm` if given.
    pub fn model_id(&self, visual_id: &str, vlm: Option<&str>) -> String {
        fused_model_id(visual_id, self.text.model_id(), vlm, self.weight)
    }

    /// One image's fused vector.
    pub fn fuse(&self, visual: &[f32], text: &[f32]) -> Vec<f32> {
        fuse(visual, text, self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn fused_cosine_is_the_weighted_blend() {
        let (va, vb) = ([3.0, 4.0, 0.0], [0.0, 4.0, 3.0]);
        let (ta, tb) = ([1.0, 0.0], [0.6, 0.8]);
        let unit = |v: &[f32]| fuse(v, &[], 1.0);
        let (cv, ct) = (cos(&unit(&va), &unit(&vb)), cos(&unit(&ta), &unit(&tb)));
        for w in [0.0, 0.3, 0.5, 0.8, 1.0] {
            let (a, b) = (fuse(&va, &ta, w), fuse(&vb, &tb, w));
            assert_eq!(a.len(), 5);
            assert!((cos(&a, &a) - 1.0).abs() < 1e-6);
            assert!((cos(&a, &b) - blend(cv, ct, w)).abs() < 1e-6, "w={w}");
        }
    }

    #[test]
    fn names_and_texts() {
        assert_eq!(
            "Fused".parse::<EmbeddingKind>().unwrap(),
            EmbeddingKind::Fused
        );
        assert!("both".parse::<EmbeddingKind>().is_err());
        assert!(check_weight(0.7).is_ok() && check_weight(1.5).is_err());
        assert_eq!(
            image_text(&["espresso", "cup"]).as_deref(),
            Some("espresso, cup")
        );
        assert_eq!(image_text(&[]), None);
        assert_eq!(
            fused_model_id("effnet@ab", "minilm@cd", None, 0.8),
            "fused(effnet@ab+minilm@cd,w=0.80)"
        );
        assert_eq!(
            fused_model_id("effnet@ab", "minilm@cd", Some("qwen@ef"), 0.8),
            "fused(effnet@ab+minilm@cd+qwen@ef,w=0.80)"
        );
        assert_eq!(
            image_text_with(Some("A cup."), Some("cup, mug")).as_deref(),
            Some("A cup.\ncup, mug")
        );
        assert_eq!(
            image_text_with(Some("A cup."), None).as_deref(),
            Some("A cup.")
        );
        assert_eq!(image_text_with(None, Some("cup")), None);
        assert_eq!(
            text_of(false, Some("A cup."), Some("cup")).as_deref(),
            Some("cup")
        );
    }
}
