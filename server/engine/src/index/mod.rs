//! Index: where the vectors are searched. One trait, [`VectorIndex`], over backends chosen by
//! `INDEX_BACKEND`: FAISS in this process ([`faiss`]: exact flat by default, HNSW, IVF and
//! IVF-PQ for large sets) or a Milvus server or cluster (`milvus`, behind the `milvus` cargo
//! feature). Vectors are L2-normalised and compared by inner product (= cosine); ids are the
//! metadata store's row ids, and each vector carries its image's split and category so that
//! searches can be filtered by them inside the backend.
//!
//! The SQLite store is the source of truth: it keeps every vector, so any backend can be
//! rebuilt (or, for Milvus, reconciled id by id) from it after a crash or a change of backend.

pub mod faiss;
#[cfg(feature = "milvus")]
pub mod milvus;

use anyhow::{bail, Result};
use std::str::FromStr;

pub use self::faiss::{FaissIndex, FaissParams};

/// Which structure holds the vectors (FAISS's, or the same kind of index inside Milvus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum IndexKind {
    /// Exact search; the default.
    Flat,
    /// HNSW graph (32 links): fast approximate search; removal rebuilds a FAISS index.
    Hnsw,
    /// Inverted lists over k-means cells, trained on a sample of the stored vectors once there
    /// are enough of them (exact search until then), retrained as the set grows.
    Ivf,
    /// IVF with product-quantised vectors: a fraction of the memory, approximate scores.
    #[value(name = "ivfpq", alias = "ivf-pq")]
    IvfPq,
}

impl FromStr for IndexKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "flat" => Ok(Self::Flat),
            "hnsw" => Ok(Self::Hnsw),
            "ivf" => Ok(Self::Ivf),
            "ivfpq" | "ivf-pq" => Ok(Self::IvfPq),
            _ => bail!("unknown index kind {s:?}: use flat, hnsw, ivf or ivfpq"),
        }
    }
}

/// Where the vectors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A FAISS index in this process, saved next to the store; the default.
    Faiss,
    /// A Milvus server or cluster at `MILVUS_URI` (needs a build with the `milvus` feature).
    Milvus,
}

/// Which backend holds a workspace's vectors, and how it indexes them.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    pub backend: Backend,
    /// The index kind and its search parameters (Milvus uses the same kind and parameters).
    pub faiss: FaissParams,
    pub milvus_uri: String,
    pub milvus_timeout: std::time::Duration,
    /// Candidates fetched per result and re-scored exactly from the store when the index's
    /// scores are approximate (IVF-PQ); 1 keeps the index's own order.
    pub rerank: usize,
}

impl IndexConfig {
    /// A FAISS index of `kind` with default parameters.
    pub fn faiss(kind: IndexKind) -> Self {
        Self {
            backend: Backend::Faiss,
            faiss: FaissParams::of(kind),
            milvus_uri: crate::settings::DEFAULT_MILVUS_URI.into(),
            milvus_timeout: std::time::Duration::from_secs(
                crate::settings::DEFAULT_MILVUS_TIMEOUT_S,
            ),
            rerank: DEFAULT_RERANK,
        }
    }

    /// A Milvus collection of `kind` at `uri`.
    pub fn milvus(uri: &str, kind: IndexKind) -> Self {
        Self {
            backend: Backend::Milvus,
            milvus_uri: uri.into(),
            ..Self::faiss(kind)
        }
    }

    /// The index kind.
    pub fn kind(&self) -> IndexKind {
        self.faiss.kind
    }
}

/// One neighbour: store id and cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: i64,
    pub score: f32,
}

/// An indexed vector's id and the attributes searches can filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub split: String,
    pub category: String,
}

pub use kadr_types::filter::Filter;

/// A vector index over one embedding space. Mutations take `&mut self` (the workspace holds
/// one writer at a time); searches take `&self` and may run from many threads at once.
pub trait VectorIndex: Send + Sync {
    /// What it is, for logs and `/status` (`"faiss flat"`, `"milvus hnsw kadr_…"`).
    fn describe(&self) -> String;

    /// The dimension of its vectors.
    fn dim(&self) -> usize;

    /// Number of vectors held.
    fn len(&self) -> usize;

    /// Number of vectors, as the backend itself counts them now (a server may have lost or
    /// kept what this process believes).
    fn count(&self) -> Result<usize> {
        Ok(self.len())
    }

    /// Whether it holds no vectors.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `entries.len()` vectors (row-major in `vectors`) under their ids.
    fn add(&mut self, entries: &[Entry], vectors: &[f32]) -> Result<()>;

    /// Removes ids; returns how many were present. An index that cannot remove in place
    /// returns an error and is rebuilt by the caller.
    fn remove(&mut self, ids: &[i64]) -> Result<usize>;

    /// Whether [`Self::remove`] works in place.
    fn supports_remove(&self) -> bool {
        true
    }

    /// The `k` nearest neighbours of each query (row-major, `dim` floats each) among the
    /// vectors that pass `filter`, best first.
    fn search(&self, queries: &[f32], k: usize, filter: &Filter) -> Result<Vec<Vec<Hit>>>;

    /// Makes what was added durable (FAISS: writes the file atomically; Milvus: flushes).
    fn persist(&self) -> Result<()>;

    /// Whether the index should be built again from all the stored vectors: an IVF that was
    /// trained on too few of them (the set has grown several-fold since).
    fn wants_rebuild(&self) -> bool {
        false
    }

    /// Every id held, when the backend can list them (Milvus: reconciled against the store
    /// after a crash, instead of rebuilt). `None`: rebuild instead.
    fn ids(&self) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }

    /// Whether its scores are approximations of the cosine (IVF-PQ compares compressed codes):
    /// the workspace then fetches more candidates and [`rerank`]s them against the stored
    /// vectors.
    fn approximate(&self) -> bool {
        false
    }
}

/// Candidates fetched per wanted result from an index with approximate scores, by default.
pub const DEFAULT_RERANK: usize = 10;

/// Re-scores one query's `candidates` exactly against their vectors and keeps the best `k`
/// (ties by id). `vectors` returns the entries and vectors of the ids it is given that still
/// exist (the store's rows); a candidate removed meanwhile drops out.
pub fn rerank(
    query: &[f32],
    candidates: &[Hit],
    k: usize,
    vectors: impl FnOnce(&[i64]) -> Result<(Vec<Entry>, Vec<f32>)>,
) -> Result<Vec<Hit>> {
    let ids: Vec<i64> = candidates.iter().map(|h| h.id).collect();
    let (entries, data) = vectors(&ids)?;
    let dim = query.len();
    if data.len() != entries.len() * dim {
        bail!(
            "re-ranking: {} stored values for {} vectors of {dim} dimensions",
            data.len(),
            entries.len()
        );
    }
    let mut hits: Vec<Hit> = entries
        .iter()
        .zip(data.chunks_exact(dim.max(1)))
        .map(|(e, v)| Hit {
            id: e.id,
            score: v.iter().zip(query).map(|(a, b)| a * b).sum(),
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(k);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerank_orders_by_exact_score_and_drops_missing() {
        // Approximate order 1, 2, 3, 4; exact scores say 3 > 1 > 4 and 2 is gone.
        let stored = [(1, [0.8f32, 0.6]), (3, [1.0, 0.0]), (4, [0.0, 1.0])];
        let hits: Vec<Hit> = [1, 2, 3, 4]
            .iter()
            .map(|&id| Hit { id, score: 0.9 })
            .collect();
        let got = rerank(&[1.0, 0.0], &hits, 2, |ids| {
            assert_eq!(ids, [1, 2, 3, 4]);
            let rows: Vec<_> = stored.iter().filter(|(id, _)| ids.contains(id)).collect();
            Ok((
                rows.iter()
                    .map(|(id, _)| Entry {
                        id: *id,
                        split: String::new(),
                        category: String::new(),
                    })
                    .collect(),
                rows.iter().flat_map(|(_, v)| *v).collect(),
            ))
        })
        .unwrap();
        assert_eq!(got, [Hit { id: 3, score: 1.0 }, Hit { id: 1, score: 0.8 }]);
        assert!(rerank(&[1.0, 0.0], &hits, 2, |_| Ok((vec![], vec![1.0]))).is_err());
    }

    #[test]
    fn index_kinds_parse() {
        assert_eq!("IVF-PQ".parse::<IndexKind>().unwrap(), IndexKind::IvfPq);
        assert!("ivf2".parse::<IndexKind>().is_err());
    }
}
