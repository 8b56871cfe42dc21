//! Search by text: a sentence ("a red car", "espresso") embedded by the text model and searched
//! against the texts of the stored images (with a VLM their captions and labels, without one
//! their backbone labels), alone or fused with an example image.
//!
//! - Text alone: the sentence's embedding against every image's text embedding, in an exact
//!   in-memory FAISS index of the text space. It is built on the first text search and again
//!   whenever the store has changed since; images whose text has no embedding yet get one
//!   first (and keep it, like the fused space's).
//! - Text and an image: the score is the fused space's cosine,
//!   [`blend`]`(cos_visual, cos_text, w)` at the fusion weight `w`. A fused workspace's index
//!   computes exactly that for the fused query; a visual one takes the best candidates by text
//!   and by image and scores each of them so (a VLM space's by text only: its index holds no
//!   visual vectors).

use super::{lock, Neighbour, Workspace};
use crate::fusion::{blend, fuse};
use crate::index::faiss::{FaissIndex, FaissParams};
use crate::index::{Filter, Hit, VectorIndex};
use crate::text::TextEmbedder;
use anyhow::{bail, Context, Result};
use kadr_types::types::check_search_text;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Candidates taken per wanted result from each side of a text + image search.
const CANDIDATES_PER_RESULT: usize = 10;

/// What a text search looks for.
#[derive(Debug, Clone)]
pub struct TextQuery {
    /// The sentence.
    pub text: String,
    /// An example image's visual embedding ([`Workspace::embed_visual_bytes`]), fused with the
    /// sentence when given.
    pub image: Option<Vec<f32>>,
}

/// How a workspace finds its text model for text search, and the text index it keeps.
#[derive(Default)]
pub(super) struct TextSide {
    /// Loads the text model of a visual workspace on first use (a fused one has its own).
    pub(super) loader: Option<Box<dyn Fn() -> Result<TextEmbedder> + Send + Sync>>,
    pub(super) loaded: Mutex<Option<Arc<TextEmbedder>>>,
    /// The visual share when a visual workspace fuses text with an image.
    pub(super) weight: Option<f32>,
    /// The text index and the store fingerprint it was built at.
    index: Mutex<Option<(String, Arc<FaissIndex>)>>,
}

impl Workspace {
    /// Lets text search in a visual workspace load its text model with `loader` when first
    /// needed, and fuse text with an image at the visual share `weight`.
    pub fn set_text_model(
        &mut self,
        loader: impl Fn() -> Result<TextEmbedder> + Send + Sync + 'static,
        weight: f32,
    ) -> Result<()> {
        crate::fusion::check_weight(weight)?;
        self.text_side.loader = Some(Box::new(loader));
        self.text_side.weight = Some(weight);
        Ok(())
    }

    /// The text model: the fused space's, or the one loaded for text search.
    pub fn text_model(&self) -> Result<Arc<TextEmbedder>> {
        if let Some(f) = &self.fusion {
            return Ok(f.text.clone());
        }
        let mut loaded = lock(&self.text_side.loaded);
        if let Some(t) = &*loaded {
            return Ok(t.clone());
        }
        let load = self
            .text_side
            .loader
            .as_ref()
            .context("this workspace has no text model for text search")?;
        let t = Arc::new(load().context("loading the text model for text search")?);
        *loaded = Some(t.clone());
        Ok(t)
    }

    /// The visual share of a text + image search.
    fn text_weight(&self) -> f32 {
        match &self.fusion {
            Some(f) => f.weight,
            None => self
                .text_side
                .weight
                .unwrap_or(crate::settings::DEFAULT_FUSION_WEIGHT),
        }
    }

    /// The `k` indexed images whose texts (fused with the example image, if any) are most
    /// similar to the query, among those `filter` lets through, best first.
    pub fn search_text(&self, q: &TextQuery, k: usize, filter: &Filter) -> Result<Vec<Neighbour>> {
        let text = check_search_text(&q.text).map_err(anyhow::Error::msg)?;
        let model = self.text_model()?;
        let t = model.embed(&[text])?.remove(0);
        if let (Some(v), Some(f)) = (&q.image, &self.fusion) {
            // The fused index scores exactly the blend.
            return self.search(&fuse(v, &t, f.weight), k, filter);
        }
        let index = self.text_index(&model)?;
        let hits = match &q.image {
            None => index.search(&t, k, filter)?.remove(0),
            Some(v) => {
                let n = k.saturating_mul(CANDIDATES_PER_RESULT).max(100);
                let mut ids: Vec<i64> = index
                    .search(&t, n, filter)?
                    .remove(0)
                    .iter()
                    .map(|h| h.id)
                    .collect();
                // The index of a VLM space holds no visual vectors: candidates by text only.
                if !self.is_vlm_space() {
                    ids.extend(self.search(v, n, filter)?.iter().map(|h| h.id));
                }
                ids.sort_unstable();
                ids.dedup();
                let w = self.text_weight();
                let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
                let pairs = self.store().vector_pairs_of(
                    self.embedder.model_id(),
                    self.text_key(model.model_id()),
                    &ids,
                )?;
                let mut hits: Vec<Hit> = pairs
                    .iter()
                    .map(|(e, pv, pt)| Hit {
                        id: e.id,
                        score: blend(dot(v, pv), dot(&t, pt), w),
                    })
                    .collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                hits.truncate(k);
                hits
            }
        };
        self.neighbours(hits)
    }

    /// The text index, built again when the store has changed since it was built. Stored
    /// images whose text has no embedding under `model` get one first.
    fn text_index(&self, model: &TextEmbedder) -> Result<Arc<FaissIndex>> {
        let visual = self.embedder.model_id();
        let fingerprint = self.store().fingerprint(visual)?;
        let mut cached = lock(&self.text_side.index);
        if let Some((f, index)) = &*cached {
            if *f == fingerprint {
                return Ok(index.clone());
            }
        }
        let key = self.text_key(model.model_id());
        let missing = self.store().missing_texts(visual, key)?;
        if !missing.is_empty() {
            tracing::info!(
                "text search: embedding the texts of {} stored images",
                missing.len()
            );
        }
        for chunk in missing.chunks(super::TEXT_BACKFILL_CHUNK) {
            self.text_vectors_with(model, chunk)?;
        }
        let (entries, data) = self.store().all_text_vectors(visual, key)?;
        if entries.is_empty() {
            bail!(
                "no indexed image has a text to search: nothing is indexed yet, or the texts \
                 (a VLM's captions, else the backbone's ImageNet labels) are missing: {visual} \
                 gives no labels and no VLM is configured (set VLM_PATH, or use a backbone with \
                 an ImageNet-1k classifier, such as the default tf_efficientnet_lite0)"
            );
        }
        let index = Arc::new(FaissIndex::build(
            FaissParams::exact(),
            model.dim(),
            &entries,
            &data,
        )?);
        *cached = Some((fingerprint, index.clone()));
        Ok(index)
    }

    /// Store rows of `hits` as neighbours, in order; a hit whose row is gone drops out.
    pub(super) fn neighbours(&self, hits: Vec<Hit>) -> Result<Vec<Neighbour>> {
        let ids: Vec<i64> = hits.iter().map(|h| h.id).collect();
        let rows: HashMap<i64, _> = self.store().rows(&ids)?;
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                rows.get(&h.id).map(|r: &crate::store::ImageRow| Neighbour {
                    id: h.id,
                    path: r.path.clone(),
                    hash: r.hash.clone(),
                    split: r.split.clone(),
                    category: r.category.clone(),
                    score: h.score,
                })
            })
            .collect())
    }
}
