//! Search by text for the web app: the sentence (and the example image of a content hash, if
//! any) goes to [`Workspace::search_text`](kadr_engine::workspace::Workspace::search_text).

use super::{internal, lock, ms, EngineBackend};
use app::errors::ApiError;
use app::types::*;
use kadr_engine::index::Filter;
use kadr_engine::workspace::TextQuery;
use std::time::Instant;

impl EngineBackend {
    pub(super) fn text_search(
        &self,
        text: &str,
        hash: Option<&str>,
        k: usize,
        filter: &Filter,
    ) -> Result<TextSearch, ApiError> {
        let t = Instant::now();
        let image = hash.map(|h| self.example_vector(h)).transpose()?;
        let ws = &self.inner.ws;
        let found = ws
            .search_text(
                &TextQuery {
                    text: text.to_string(),
                    image,
                },
                k,
                filter,
            )
            .map_err(internal)?;
        let text_model = ws.text_model().map_err(internal)?.model_id().to_string();
        Ok(TextSearch {
            text: text.to_string(),
            example: hash.map(str::to_string),
            hits: found.into_iter().map(|n| self.hit(n)).collect(),
            text_model,
            search_ms: ms(t),
        })
    }

    /// The visual embedding of content `hash`: an indexed image's, or an upload's. An upload's
    /// record keeps the vector of the served space; in a fused space its visual part is the
    /// first block, which normalised is the visual embedding (see `kadr_engine::fusion`).
    fn example_vector(&self, hash: &str) -> Result<Vec<f32>, ApiError> {
        let ws = &self.inner.ws;
        if let Some((_, v)) = ws
            .store()
            .row_by_hash(&self.inner.visual_model, hash)
            .map_err(internal)?
        {
            return Ok(v);
        }
        let record = lock(&self.inner.history)?
            .get(self.model(), hash)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::not_found(format!("nothing analysed or indexed has hash {hash}"))
            })?;
        let mut v = record.embedding;
        if let Some(f) = ws.fusion() {
            v.truncate(v.len().saturating_sub(f.text.dim()));
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
        }
        Ok(v)
    }
}
