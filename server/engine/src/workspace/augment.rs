//! Database-side augmentation (DBA) as a search option: every indexed vector replaced by
//! [`Expansion::expand`] of itself with its `n` nearest other indexed images, so that an image
//! is found through the images around it as well as through its own pixels.
//!
//! The augmented vectors are a second, in-memory FAISS index beside the workspace's own (the
//! same kind; IVF instead of IVF-PQ, so its scores are exact), built from the store's vectors
//! with their neighbours found by the workspace's index, for one `(n, α)` at a time. It is
//! built on the first search that asks for it, or ahead of time by [`Workspace::augment`] (the
//! server calls it after every index job and at start for the `SERVE_DBA` setting), and again when
//! the indexed set has changed since. While an index job runs, the copy built before it keeps
//! being served: a search does not wait for a rebuild that the next batch would make stale.
//! Its scores are cosines to the augmented vectors; the hits are the same store rows as a
//! plain search's, so filters, votes and analyses work unchanged.

use super::{lock, Neighbour, Workspace};
use crate::expand::{Expansion, Rerank};
use crate::index::faiss::{FaissIndex, FaissParams};
use crate::index::{Filter, IndexKind, VectorIndex};
use anyhow::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

/// Indexed vectors whose neighbours are searched in one call while augmenting.
const NEIGHBOUR_BATCH: usize = 1024;

/// The indexed set augmented for one `dba`.
pub(super) struct Augmented {
    dba: Expansion,
    /// The workspace's fingerprint (what was indexed) when it was built.
    fingerprint: String,
    index: FaissIndex,
    /// Each store id's row in `data`.
    rows: HashMap<i64, usize>,
    /// The augmented vectors, row after row (what query expansion averages in).
    data: Vec<f32>,
    dim: usize,
}

impl Augmented {
    fn row(&self, id: i64) -> Option<&[f32]> {
        let r = *self.rows.get(&id)?;
        Some(&self.data[r * self.dim..(r + 1) * self.dim])
    }
}

/// The augmented copy a workspace keeps (at most one: the last `dba` asked for).
#[derive(Default)]
pub(super) struct AugmentedSide {
    cached: Mutex<Option<Arc<Augmented>>>,
}

/// The kind the augmented copy is built as: the workspace's, except that IVF-PQ becomes IVF
/// (the augmented vectors are not stored, so approximate scores could not be re-ranked).
fn augmented_params(main: FaissParams) -> FaissParams {
    match main.kind {
        IndexKind::IvfPq => FaissParams {
            kind: IndexKind::Ivf,
            ..main
        },
        _ => main,
    }
}

impl Workspace {
    /// The `k` most similar indexed images to an embedding among those `filter` lets
    /// through, re-ranked by `rr`: the query expanded by `rr.qe` and, with `rr.dba` on,
    /// searched against the indexed images augmented by `rr.dba` (the expansion then averages
    /// in the neighbours' augmented vectors, as `kadr eval --dba N --qe M` scores it).
    pub fn search_reranked(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        rr: &Rerank,
    ) -> Result<Vec<Neighbour>> {
        if rr.dba.is_off() {
            return self.search_expanded(query, k, filter, &rr.qe);
        }
        let Some(aug) = self.augmented(&rr.dba)? else {
            return Ok(Vec::new());
        };
        anyhow::ensure!(
            query.len() == aug.dim,
            "the query has {} dimensions, the index {}",
            query.len(),
            aug.dim
        );
        let first = |q: &[f32], k: usize| -> Result<Vec<crate::index::Hit>> {
            Ok(aug
                .index
                .search(q, k, filter)?
                .into_iter()
                .next()
                .unwrap_or_default())
        };
        let hits = if rr.qe.is_off() {
            first(query, k)?
        } else {
            let neighbours = first(query, rr.qe.n)?;
            let expanded = rr.qe.expand(
                query,
                neighbours
                    .iter()
                    .filter_map(|h| Some((aug.row(h.id)?, h.score))),
            );
            first(&expanded, k)?
        };
        self.neighbours(hits)
    }

    /// Builds the augmented copy for `dba` now, unless the one held is current: what the
    /// server does after indexing, so that searches with it do not wait. Off: nothing.
    pub fn augment(&self, dba: &Expansion) -> Result<()> {
        if !dba.is_off() {
            self.augmented(dba)?;
        }
        Ok(())
    }

    /// The augmented copy for `dba`: the one held when it was built for the indexed set as
    /// it is (or while a writer is changing it), else built again. `None`: nothing indexed.
    fn augmented(&self, dba: &Expansion) -> Result<Option<Arc<Augmented>>> {
        let mut cached = lock(&self.augmented.cached);
        let fingerprint = self.fingerprint()?;
        if let Some(a) = cached.as_ref().filter(|a| a.dba == *dba) {
            let writing = matches!(self.writer.try_lock(), Err(TryLockError::WouldBlock));
            if a.fingerprint == fingerprint || writing {
                return Ok(Some(a.clone()));
            }
        }
        let built = self.build_augmented(*dba, fingerprint)?.map(Arc::new);
        *cached = built.clone();
        Ok(built)
    }

    fn build_augmented(&self, dba: Expansion, fingerprint: String) -> Result<Option<Augmented>> {
        let t = Instant::now();
        let (entries, data) = self.space_vectors_all()?;
        if entries.is_empty() {
            return Ok(None);
        }
        let dim = data.len() / entries.len();
        let rows: HashMap<i64, usize> =
            entries.iter().enumerate().map(|(r, e)| (e.id, r)).collect();
        let mut augmented = Vec::with_capacity(data.len());
        for (b, batch) in data.chunks(NEIGHBOUR_BATCH * dim).enumerate() {
            // One more than wanted: each image finds itself first.
            let found = match &*self.index_ref() {
                Some(index) => index.search(batch, dba.n + 1, &Filter::all())?,
                None => return Ok(None),
            };
            for (i, (v, hits)) in batch.chunks(dim).zip(found).enumerate() {
                let me = b * NEIGHBOUR_BATCH + i;
                let others = hits.iter().filter_map(|h| {
                    let r = *rows.get(&h.id)?;
                    (r != me).then(|| (&data[r * dim..(r + 1) * dim], h.score))
                });
                augmented.extend(dba.expand(v, others));
            }
        }
        let index = FaissIndex::build(
            augmented_params(self.config.faiss),
            dim,
            &entries,
            &augmented,
        )?;
        tracing::info!(
            "database augmentation ({} neighbours, α {}) of {} images in {:.1} s",
            dba.n,
            dba.alpha,
            entries.len(),
            t.elapsed().as_secs_f64()
        );
        Ok(Some(Augmented {
            dba,
            fingerprint,
            index,
            rows,
            data: augmented,
            dim,
        }))
    }
}
