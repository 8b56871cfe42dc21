//! Index: the FAISS vector index. Inner product on L2-normalised vectors (= cosine), exact
//! (`IDMap2,Flat`) by default, approximate (`HNSW32` or `IVF`) for large sets. Ids are the
//! metadata store's row ids. The file is written atomically (temp file, fsync, rename);
//! the store keeps every vector, so an index can always be rebuilt from it.

use anyhow::{bail, Context, Result};
use faiss::index::IndexImpl;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};
use std::path::Path;
use std::str::FromStr;

/// Which FAISS structure holds the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexKind {
    /// Exact search; the default.
    Flat,
    /// HNSW graph (32 links); removal rebuilds the index.
    Hnsw,
    /// Inverted lists over k-means cells; trained on the vectors present when built.
    Ivf,
}

impl FromStr for IndexKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "flat" => Ok(Self::Flat),
            "hnsw" => Ok(Self::Hnsw),
            "ivf" => Ok(Self::Ivf),
            _ => bail!("unknown index kind {s:?}: use flat, hnsw or ivf"),
        }
    }
}

impl IndexKind {
    /// Whether vectors can be removed in place.
    pub fn supports_remove(self) -> bool {
        !matches!(self, Self::Hnsw)
    }
}

/// One neighbour: store id and cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: i64,
    pub score: f32,
}

/// A FAISS index over normalised vectors of one dimension.
pub struct VectorIndex {
    inner: IndexImpl,
    kind: IndexKind,
    dim: usize,
}

impl VectorIndex {
    /// Builds an index of `kind` over `vectors` (row-major, `ids.len()` rows of `dim`).
    pub fn build(kind: IndexKind, dim: usize, ids: &[i64], vectors: &[f32]) -> Result<Self> {
        anyhow::ensure!(
            vectors.len() == ids.len() * dim,
            "vector data does not match ids × dim"
        );
        let n = ids.len();
        let description = match kind {
            IndexKind::Flat => "IDMap2,Flat".to_string(),
            IndexKind::Hnsw => "IDMap2,HNSW32,Flat".to_string(),
            // ~4·√n cells, at least 39 training points per cell as FAISS advises.
            IndexKind::Ivf => format!(
                "IVF{},Flat",
                ((4.0 * (n as f64).sqrt()) as usize).clamp(1, (n / 39).max(1))
            ),
        };
        let mut inner = index_factory(dim as u32, &description, MetricType::InnerProduct)
            .with_context(|| format!("creating FAISS index {description}"))?;
        if kind == IndexKind::Ivf {
            anyhow::ensure!(n > 0, "an IVF index needs vectors to train on");
            inner.train(vectors).context("training IVF")?;
            let nlist: usize = description[3..description.len() - 5].parse().unwrap_or(1);
            faiss::index::autotune::ParameterSpace::new()?.set_index_parameter(
                &inner,
                "nprobe",
                nlist.min(16) as f64,
            )?;
        }
        let mut index = Self { inner, kind, dim };
        index.add(ids, vectors)?;
        Ok(index)
    }

    /// Adds vectors under the given ids.
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<()> {
        anyhow::ensure!(
            vectors.len() == ids.len() * self.dim,
            "vector data does not match ids × dim"
        );
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        self.inner.add_with_ids(vectors, &ids)?;
        Ok(())
    }

    /// Removes ids; returns how many were present. Fails for kinds that cannot remove.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize> {
        if !self.kind.supports_remove() {
            bail!("{:?} indexes cannot remove vectors in place", self.kind);
        }
        let ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        Ok(self.inner.remove_ids(&IdSelector::batch(&ids)?)?)
    }

    /// The `k` nearest neighbours of each query (row-major queries of `dim`). Takes `&self`:
    /// FAISS's CPU search does not modify the index, so any number of threads may search at
    /// once (faiss-rs offers `&self` search only on concrete index types, so this calls
    /// `faiss_Index_search` of the C API, as its `ConcurrentIndex` does).
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        anyhow::ensure!(
            queries.len().is_multiple_of(self.dim),
            "query has the wrong dimension"
        );
        let nq = queries.len() / self.dim;
        if nq == 0 || k == 0 || self.is_empty() {
            return Ok(vec![Vec::new(); nq]);
        }
        let mut distances = vec![0f32; nq * k];
        let mut labels = vec![-1i64; nq * k];
        // SAFETY: the index pointer is valid for `self`'s lifetime; the buffers hold nq·k
        // results and the queries nq·dim floats, as faiss_Index_search requires.
        let code = unsafe {
            faiss_sys::faiss_Index_search(
                self.inner.inner_ptr(),
                nq as faiss_sys::idx_t,
                queries.as_ptr(),
                k as faiss_sys::idx_t,
                distances.as_mut_ptr(),
                labels.as_mut_ptr(),
            )
        };
        if code != 0 {
            bail!("FAISS search failed: {}", last_faiss_error());
        }
        Ok((0..nq)
            .map(|q| {
                (0..k)
                    .filter_map(|j| {
                        let id = labels[q * k + j];
                        (id >= 0).then(|| Hit {
                            id,
                            score: distances[q * k + j],
                        })
                    })
                    .collect()
            })
            .collect())
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.inner.ntotal() as usize
    }

    /// Whether the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The structure in use.
    pub fn kind(&self) -> IndexKind {
        self.kind
    }

    /// Writes the index to `path` atomically: a crash leaves either the old file or the new.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("faiss.tmp");
        let tmp_str = tmp.to_str().context("index path is not UTF-8")?;
        faiss::write_index(&self.inner, tmp_str)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads an index written by [`save`](Self::save).
    pub fn load(path: &Path, kind: IndexKind) -> Result<Self> {
        let p = path.to_str().context("index path is not UTF-8")?;
        let inner = faiss::read_index(p)
            .with_context(|| format!("{} is not a readable FAISS index", path.display()))?;
        let dim = inner.d() as usize;
        Ok(Self { inner, kind, dim })
    }
}

/// FAISS's message for the last error on this thread.
fn last_faiss_error() -> String {
    // SAFETY: FAISS returns a thread-local C string, or null when there is none.
    unsafe {
        let p = faiss_sys::faiss_get_last_error();
        if p.is_null() {
            "unknown error".into()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        for row in v.chunks_mut(dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    #[test]
    fn flat_finds_itself_removes_and_round_trips() {
        let (n, dim) = (200, 16);
        let v = unit_vectors(n, dim, 7);
        let ids: Vec<i64> = (0..n as i64).map(|i| i * 3 + 1).collect();
        let mut idx = VectorIndex::build(IndexKind::Flat, dim, &ids, &v).unwrap();
        let hits = idx.search(&v[5 * dim..6 * dim], 3).unwrap();
        assert_eq!(hits[0][0].id, ids[5]);
        assert!((hits[0][0].score - 1.0).abs() < 1e-5);
        assert!(hits[0][0].score >= hits[0][1].score);
        assert_eq!(idx.remove(&[ids[5]]).unwrap(), 1);
        assert_eq!(idx.len(), n - 1);
        let again = idx.search(&v[5 * dim..6 * dim], 3).unwrap();
        assert_ne!(again[0][0].id, ids[5]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.faiss");
        idx.save(&path).unwrap();
        let back = VectorIndex::load(&path, IndexKind::Flat).unwrap();
        assert_eq!(back.len(), n - 1);
        let q = &v[..10 * dim];
        assert_eq!(back.search(q, 5).unwrap(), idx.search(q, 5).unwrap());
    }

    #[test]
    fn approximate_kinds_recall_well() {
        let (n, dim) = (2000, 32);
        let v = unit_vectors(n, dim, 11);
        let ids: Vec<i64> = (0..n as i64).collect();
        let exact = VectorIndex::build(IndexKind::Flat, dim, &ids, &v).unwrap();
        let q = &v[..100 * dim];
        let truth = exact.search(q, 1).unwrap();
        for kind in [IndexKind::Hnsw, IndexKind::Ivf] {
            let idx = VectorIndex::build(kind, dim, &ids, &v).unwrap();
            let got = idx.search(q, 1).unwrap();
            let agree = got
                .iter()
                .zip(&truth)
                .filter(|(a, b)| a[0].id == b[0].id)
                .count();
            assert!(agree >= 90, "{kind:?} recall@1 {agree}/100");
        }
    }

    #[test]
    fn garbage_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.faiss");
        std::fs::write(&path, b"not an index").unwrap();
        assert!(VectorIndex::load(&path, IndexKind::Flat).is_err());
    }
}
