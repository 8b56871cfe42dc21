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
}

impl FromStr for EmbeddingKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "visual" => Ok(Self::Visual),
            "fused" => Ok(Self::Fused),
            _ => bail!("unknown EMBEDDING {s:?}: use visual or fused"),
        }
    }
}

/// The text an image is described by: for now the backbone's top ImageNet labels, most
/// probable first ("espresso, cup, coffee mug, …"). `None` when there is nothing to say (a
/// classifier that is not ImageNet-1k). A VLM caption, once stored, takes precedence here.
pub fn image_text(labels: &[&str]) -> Option<String> {
    (!labels.is_empty()).then(|| labels.join(", "))
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

/// The id of a fused space: both model ids and the weight, so vectors of different models or
/// weights never share an index.
pub fn fused_model_id(visual_id: &str, text_id: &str, w: f32) -> String {
    format!("fused({visual_id}+{text_id},w={w:.2})")
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

    /// The fused space's id for a visual model.
    pub fn model_id(&self, visual_id: &str) -> String {
        fused_model_id(visual_id, self.text.model_id(), self.weight)
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
            fused_model_id("effnet@ab", "minilm@cd", 0.8),
            "fused(effnet@ab+minilm@cd,w=0.80)"
        );
    }
}
