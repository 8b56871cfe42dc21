//! The FAISS backend: an index in this process, written atomically next to the store.
//!
//! - `flat` (`IDMap2,Flat`): exact, the default; right up to a few hundred thousand vectors.
//! - `hnsw` (`IDMap2,HNSW32,Flat`): a graph; fast at millions. FAISS cannot remove from it in
//!   place, so removals rebuild it. `HNSW_EF_SEARCH` trades speed for recall.
//! - `ivf` (`IVF{nlist},Flat`) and `ivfpq` (`IVF{nlist},PQ{m}np`, about `m` bytes a vector):
//!   k-means cells trained on a sample of the stored vectors. Until [`FaissParams::train_min`]
//!   vectors exist they search exactly (a flat index: training on a handful of images gives
//!   useless cells); past it the workspace rebuilds them trained, and again whenever the set has
//!   grown four-fold since (`nlist` ≈ √n, so the ideal cell count has doubled). `IVF_NPROBE`
//!   cells are visited per query.
//!
//! Filters (split / category) become a FAISS `IDSelectorBitmap` passed with the search, so
//! they are applied inside the search, not to its results.

use super::{Entry, Filter, Hit, IndexKind, VectorIndex};
use anyhow::{bail, Context, Result};
use faiss::index::IndexImpl;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Vectors below which an IVF kind searches exactly instead of training cells.
pub const IVF_TRAIN_MIN: usize = 20_000;
/// Cells probed per query by default.
pub const DEFAULT_NPROBE: usize = 32;
/// HNSW candidate list length at search time by default.
pub const DEFAULT_EF_SEARCH: usize = 128;
/// Training points per cell FAISS asks for at least (it warns below 39).
const POINTS_PER_CELL: usize = 39;
/// Training sample per cell: more costs training time for little gain.
const SAMPLE_PER_CELL: usize = 64;

/// How a FAISS index is built and searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaissParams {
    pub kind: IndexKind,
    /// IVF cells visited per query.
    pub nprobe: usize,
    /// HNSW candidates kept while searching.
    pub ef_search: usize,
    /// Vectors an IVF kind waits for before it trains its cells.
    pub train_min: usize,
}

impl Default for FaissParams {
    fn default() -> Self {
        Self::exact()
    }
}

impl FaissParams {
    /// An exact flat index.
    pub fn exact() -> Self {
        Self::of(IndexKind::Flat)
    }

    /// `kind` with the default search parameters.
    pub fn of(kind: IndexKind) -> Self {
        Self {
            kind,
            nprobe: DEFAULT_NPROBE,
            ef_search: DEFAULT_EF_SEARCH,
            train_min: IVF_TRAIN_MIN,
        }
    }
}

/// The cell count an IVF over `n` vectors should have: about √n, with enough training points
/// per cell.
pub fn ideal_nlist(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(1, (n / POINTS_PER_CELL).max(1))
}

/// Sub-quantisers of an IVF-PQ over `dim`-d vectors: the largest divisor of `dim` up to
/// min(128, dim / 8), so a 1280-d vector becomes 128 bytes.
pub(crate) fn pq_subquantizers(dim: usize) -> usize {
    let cap = (dim / 8).clamp(1, 128);
    (1..=cap)
        .rev()
        .find(|&m| dim.is_multiple_of(m))
        .unwrap_or(1)
}

/// The structure actually built (an IVF kind is flat until trained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Built {
    Flat,
    Hnsw,
    /// Trained on (a sample of) `trained_on` vectors.
    Ivf {
        nlist: usize,
        trained_on: usize,
    },
}

/// How many vectors an IVF with `nlist` cells was trained over (the inverse of
/// [`ideal_nlist`]), for an index read back from its file.
fn trained_on(nlist: usize) -> usize {
    if nlist >= POINTS_PER_CELL {
        nlist * nlist
    } else {
        nlist * POINTS_PER_CELL
    }
}

/// Split and category of every id, interned.
#[derive(Default)]
struct Attributes {
    names: Vec<String>,
    code: HashMap<String, u32>,
    of: HashMap<i64, (u32, u32)>,
}

impl Attributes {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&c) = self.code.get(s) {
            return c;
        }
        let c = self.names.len() as u32;
        self.names.push(s.to_string());
        self.code.insert(s.to_string(), c);
        c
    }

    fn insert(&mut self, e: &Entry) {
        let v = (self.intern(&e.split), self.intern(&e.category));
        self.of.insert(e.id, v);
    }

    /// A bitmap of the ids that pass `filter` (bit `id` of byte `id / 8`), and how many do.
    fn bitmap(&self, filter: &Filter) -> (Vec<u8>, usize) {
        let allowed = |list: &[String]| -> Option<Vec<u32>> {
            (!list.is_empty()).then(|| {
                list.iter()
                    .filter_map(|s| self.code.get(s).copied())
                    .collect()
            })
        };
        let (splits, cats) = (allowed(&filter.splits), allowed(&filter.categories));
        let max = self.of.keys().copied().max().unwrap_or(0).max(0) as usize;
        let mut bits = vec![0u8; max / 8 + 1];
        let mut n = 0;
        for (&id, (s, c)) in &self.of {
            if splits.as_ref().is_none_or(|v| v.contains(s))
                && cats.as_ref().is_none_or(|v| v.contains(c))
                && id >= 0
            {
                bits[id as usize / 8] |= 1 << (id % 8);
                n += 1;
            }
        }
        (bits, n)
    }
}

/// The last filter's bitmap, reused while nothing was added or removed.
type SelectorCache = Mutex<Option<(Filter, u64, Arc<(Vec<u8>, usize)>)>>;

/// A FAISS index over normalised vectors of one dimension.
pub struct FaissIndex {
    inner: IndexImpl,
    built: Built,
    params: FaissParams,
    dim: usize,
    attrs: Attributes,
    /// Bumped by every change, so cached filter bitmaps go stale.
    generation: u64,
    selectors: SelectorCache,
    /// Where [`VectorIndex::persist`] writes; `None` for an index that lives in memory only.
    path: Option<PathBuf>,
}

impl FaissIndex {
    /// Builds an index over `vectors` (row-major, `entries.len()` rows of `dim`): trained on
    /// them when the kind needs training and there are enough of them.
    pub fn build(
        params: FaissParams,
        dim: usize,
        entries: &[Entry],
        vectors: &[f32],
    ) -> Result<Self> {
        anyhow::ensure!(
            vectors.len() == entries.len() * dim,
            "vector data does not match ids × dim"
        );
        let n = entries.len();
        let ivf = matches!(params.kind, IndexKind::Ivf | IndexKind::IvfPq) && n >= params.train_min;
        let (description, built) = match params.kind {
            IndexKind::Hnsw => ("IDMap2,HNSW32,Flat".to_string(), Built::Hnsw),
            _ if ivf => {
                let nlist = ideal_nlist(n);
                // `np`: no polysemous training (it reorders the codes for Hamming-distance
                // filtering, which kadr does not use, and took 530 s of a 540 s build here).
                let codes = match params.kind {
                    IndexKind::IvfPq => format!("PQ{}np", pq_subquantizers(dim)),
                    _ => "Flat".into(),
                };
                (
                    format!("IVF{nlist},{codes}"),
                    Built::Ivf {
                        nlist,
                        trained_on: n,
                    },
                )
            }
            _ => ("IDMap2,Flat".to_string(), Built::Flat),
        };
        let mut inner = index_factory(dim as u32, &description, MetricType::InnerProduct)
            .with_context(|| format!("creating FAISS index {description}"))?;
        if let Built::Ivf { nlist, .. } = built {
            let sample = training_sample(vectors, dim, (SAMPLE_PER_CELL * nlist).max(10_000));
            tracing::info!(
                "training {description} on {} of {n} vectors",
                sample.len() / dim
            );
            inner.train(&sample).context("training the IVF cells")?;
        }
        let mut index = Self {
            inner,
            built,
            params,
            dim,
            attrs: Attributes::default(),
            generation: 0,
            selectors: Mutex::new(None),
            path: None,
        };
        index.apply_search_params()?;
        index.add(entries, vectors)?;
        Ok(index)
    }

    /// An exact in-memory index over `vectors` under ids 0, 1, 2, …: what evaluations and
    /// submissions search.
    pub fn exact(dim: usize, vectors: &[f32]) -> Result<Self> {
        let entries: Vec<Entry> = (0..(vectors.len() / dim.max(1)) as i64)
            .map(|id| Entry {
                id,
                split: String::new(),
                category: String::new(),
            })
            .collect();
        Self::build(FaissParams::exact(), dim, &entries, vectors)
    }

    /// Writes to `path` on [`VectorIndex::persist`].
    pub fn with_path(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }

    /// Reads an index written by [`VectorIndex::persist`]; `entries` are the ids it holds
    /// with their attributes (from the store, whose fingerprint matched the file's).
    pub fn load(path: &Path, params: FaissParams, entries: &[Entry]) -> Result<Self> {
        let p = path.to_str().context("index path is not UTF-8")?;
        let inner = faiss::read_index(p)
            .with_context(|| format!("{} is not a readable FAISS index", path.display()))?;
        let dim = inner.d() as usize;
        // SAFETY: the pointer is valid while `inner` lives; the cast returns null for any
        // index that is not an IVF.
        let nlist = unsafe {
            let ivf = faiss_sys::faiss_IndexIVF_cast(inner.inner_ptr());
            (!ivf.is_null()).then(|| faiss_sys::faiss_IndexIVF_nlist(ivf))
        };
        let built = match (params.kind, nlist) {
            (_, Some(nlist)) => Built::Ivf {
                nlist,
                trained_on: trained_on(nlist),
            },
            (IndexKind::Hnsw, None) => Built::Hnsw,
            _ => Built::Flat,
        };
        anyhow::ensure!(
            inner.ntotal() as usize == entries.len(),
            "{} holds {} vectors, the store {}",
            path.display(),
            inner.ntotal(),
            entries.len()
        );
        let mut index = Self {
            inner,
            built,
            params,
            dim,
            attrs: Attributes::default(),
            generation: 0,
            selectors: Mutex::new(None),
            path: Some(path.to_path_buf()),
        };
        for e in entries {
            index.attrs.insert(e);
        }
        index.apply_search_params()?;
        Ok(index)
    }

    /// The FAISS structure in use, e.g. `"IVF1000,Flat"` or `"IDMap2,Flat"`.
    pub fn structure(&self) -> String {
        match self.built {
            Built::Flat => "flat".into(),
            Built::Hnsw => format!("hnsw efSearch={}", self.params.ef_search),
            Built::Ivf { nlist, .. } => format!(
                "{} nlist={nlist} nprobe={}",
                if self.params.kind == IndexKind::IvfPq {
                    "ivfpq"
                } else {
                    "ivf"
                },
                self.params.nprobe.min(nlist)
            ),
        }
    }

    /// Changes the search-time parameters (`nprobe`, `ef_search`) of a built index.
    pub fn set_search_params(&mut self, nprobe: usize, ef_search: usize) -> Result<()> {
        self.params.nprobe = nprobe;
        self.params.ef_search = ef_search;
        self.apply_search_params()
    }

    fn apply_search_params(&mut self) -> Result<()> {
        let space = faiss::index::autotune::ParameterSpace::new()?;
        match self.built {
            Built::Ivf { nlist, .. } => {
                space.set_index_parameter(
                    &self.inner,
                    "nprobe",
                    self.params.nprobe.clamp(1, nlist) as f64,
                )?;
            }
            Built::Hnsw => {
                space.set_index_parameter(&self.inner, "efSearch", self.params.ef_search as f64)?
            }
            Built::Flat => {}
        }
        Ok(())
    }

    /// The bitmap selecting what passes `filter`, cached until the next change.
    fn selection(&self, filter: &Filter) -> Arc<(Vec<u8>, usize)> {
        let mut cache = self.selectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, g, bits)) = &*cache {
            if f == filter && *g == self.generation {
                return bits.clone();
            }
        }
        let bits = Arc::new(self.attrs.bitmap(filter));
        *cache = Some((filter.clone(), self.generation, bits.clone()));
        bits
    }
}

/// Up to `max` rows of `vectors`, evenly spaced (deterministic: the same store trains the same
/// cells).
fn training_sample(vectors: &[f32], dim: usize, max: usize) -> Vec<f32> {
    let n = vectors.len() / dim;
    if n <= max {
        return vectors.to_vec();
    }
    let mut out = Vec::with_capacity(max * dim);
    for i in 0..max {
        let row = i * n / max;
        out.extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
    }
    out
}

impl VectorIndex for FaissIndex {
    fn approximate(&self) -> bool {
        self.params.kind == IndexKind::IvfPq && matches!(self.built, Built::Ivf { .. })
    }

    fn describe(&self) -> String {
        format!("faiss {}", self.structure())
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.inner.ntotal() as usize
    }

    fn add(&mut self, entries: &[Entry], vectors: &[f32]) -> Result<()> {
        anyhow::ensure!(
            vectors.len() == entries.len() * self.dim,
            "vector data does not match ids × dim"
        );
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<Idx> = entries.iter().map(|e| Idx::new(e.id as u64)).collect();
        self.inner.add_with_ids(vectors, &ids)?;
        for e in entries {
            self.attrs.insert(e);
        }
        self.generation += 1;
        Ok(())
    }

    fn remove(&mut self, ids: &[i64]) -> Result<usize> {
        if !self.supports_remove() {
            bail!("HNSW indexes cannot remove vectors in place");
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let faiss_ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        let n = self.inner.remove_ids(&IdSelector::batch(&faiss_ids)?)?;
        for id in ids {
            self.attrs.of.remove(id);
        }
        self.generation += 1;
        Ok(n)
    }

    fn supports_remove(&self) -> bool {
        self.built != Built::Hnsw
    }

    /// Takes `&self`: FAISS's CPU search does not modify the index, so any number of threads
    /// may search at once (faiss-rs offers `&self` search only on concrete index types, so
    /// this calls `faiss_Index_search` of the C API, as its `ConcurrentIndex` does).
    fn search(&self, queries: &[f32], k: usize, filter: &Filter) -> Result<Vec<Vec<Hit>>> {
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
        let code = if filter.is_empty() {
            // SAFETY: the index pointer is valid for `self`'s lifetime; the buffers hold nq·k
            // results and the queries nq·dim floats, as faiss_Index_search requires.
            unsafe {
                faiss_sys::faiss_Index_search(
                    self.inner.inner_ptr(),
                    nq as faiss_sys::idx_t,
                    queries.as_ptr(),
                    k as faiss_sys::idx_t,
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                )
            }
        } else {
            let selection = self.selection(filter);
            let (bits, selected) = &*selection;
            if *selected == 0 {
                return Ok(vec![Vec::new(); nq]);
            }
            // SAFETY: the selector reads `bits`, which outlives it (both end in this block);
            // the parameters own nothing but the selector pointer and are freed before it.
            // FAISS reads the parameters during the call only.
            unsafe {
                let mut sel: *mut faiss_sys::FaissIDSelectorBitmap = std::ptr::null_mut();
                if faiss_sys::faiss_IDSelectorBitmap_new(&mut sel, bits.len(), bits.as_ptr()) != 0 {
                    bail!("FAISS selector: {}", last_faiss_error());
                }
                let mut params: *mut faiss_sys::FaissSearchParameters = std::ptr::null_mut();
                let made = match self.built {
                    Built::Ivf { nlist, .. } => faiss_sys::faiss_SearchParametersIVF_new_with(
                        &mut params,
                        sel as *mut faiss_sys::FaissIDSelector,
                        self.params.nprobe.clamp(1, nlist),
                        0,
                    ),
                    _ => faiss_sys::faiss_SearchParameters_new(
                        &mut params,
                        sel as *mut faiss_sys::FaissIDSelector,
                    ),
                };
                let code = if made != 0 {
                    made
                } else {
                    faiss_sys::faiss_Index_search_with_params(
                        self.inner.inner_ptr(),
                        nq as faiss_sys::idx_t,
                        queries.as_ptr(),
                        k as faiss_sys::idx_t,
                        params,
                        distances.as_mut_ptr(),
                        labels.as_mut_ptr(),
                    )
                };
                if !params.is_null() {
                    faiss_sys::faiss_SearchParameters_free(params);
                }
                faiss_sys::faiss_IDSelector_free(sel as *mut faiss_sys::FaissIDSelector);
                code
            }
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

    /// Writes the index atomically: a crash leaves either the old file or the new.
    fn persist(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
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

    fn wants_rebuild(&self) -> bool {
        let n = self.len();
        match self.built {
            Built::Flat => {
                matches!(self.params.kind, IndexKind::Ivf | IndexKind::IvfPq)
                    && n >= self.params.train_min
            }
            // Four-fold growth: √n, the ideal cell count, has doubled.
            Built::Ivf { trained_on, .. } => n >= 4 * trained_on,
            Built::Hnsw => false,
        }
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

    use kadr_testkit::unit_vectors;

    fn entries(ids: &[i64]) -> Vec<Entry> {
        ids.iter()
            .map(|&id| Entry {
                id,
                split: ["train", "valid", "test"][id as usize % 3].into(),
                category: format!("c{}", id % 5),
            })
            .collect()
    }

    #[test]
    fn flat_finds_itself_removes_and_round_trips() {
        let (n, dim) = (200, 16);
        let v = unit_vectors(n, dim, 7);
        let ids: Vec<i64> = (0..n as i64).map(|i| i * 3 + 1).collect();
        let all = Filter::all();
        let mut idx = FaissIndex::build(FaissParams::exact(), dim, &entries(&ids), &v).unwrap();
        let hits = idx.search(&v[5 * dim..6 * dim], 3, &all).unwrap();
        assert_eq!(hits[0][0].id, ids[5]);
        assert!((hits[0][0].score - 1.0).abs() < 1e-5);
        assert!(hits[0][0].score >= hits[0][1].score);
        assert_eq!(idx.remove(&[ids[5]]).unwrap(), 1);
        assert_eq!(idx.len(), n - 1);
        let again = idx.search(&v[5 * dim..6 * dim], 3, &all).unwrap();
        assert_ne!(again[0][0].id, ids[5]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.faiss");
        let idx = idx.with_path(&path);
        idx.persist().unwrap();
        let kept: Vec<i64> = ids.iter().copied().filter(|&i| i != ids[5]).collect();
        let back = FaissIndex::load(&path, FaissParams::exact(), &entries(&kept)).unwrap();
        assert_eq!(back.len(), n - 1);
        let q = &v[..10 * dim];
        assert_eq!(
            back.search(q, 5, &all).unwrap(),
            idx.search(q, 5, &all).unwrap()
        );
        // The ids given must be those of the file.
        assert!(FaissIndex::load(&path, FaissParams::exact(), &entries(&ids)).is_err());
    }

    /// A filtered search returns exactly the best of the vectors that pass, for every kind:
    /// the same as an unfiltered exact search over only those vectors.
    #[test]
    fn filtered_search_is_exact_among_what_passes() {
        let (n, dim) = (3000, 24);
        let v = unit_vectors(n, dim, 3);
        let ids: Vec<i64> = (0..n as i64).collect();
        let e = entries(&ids);
        let filter = Filter::parse("train,valid", "c1,c2");
        let keep: Vec<usize> = (0..n)
            .filter(|&i| filter.matches(&e[i].split, &e[i].category))
            .collect();
        let sub: Vec<f32> = keep
            .iter()
            .flat_map(|&i| v[i * dim..(i + 1) * dim].to_vec())
            .collect();
        let sub_entries: Vec<Entry> = keep.iter().map(|&i| e[i].clone()).collect();
        let truth = FaissIndex::build(FaissParams::exact(), dim, &sub_entries, &sub).unwrap();
        let q = &v[..50 * dim];
        let want = truth.search(q, 10, &Filter::all()).unwrap();
        let exact = FaissIndex::build(FaissParams::exact(), dim, &e, &v).unwrap();
        let ids = |r: &[Vec<Hit>]| -> Vec<Vec<i64>> {
            r.iter().map(|h| h.iter().map(|x| x.id).collect()).collect()
        };
        // The same neighbours (scores may differ in the last bit: another summation order).
        assert_eq!(ids(&exact.search(q, 10, &filter).unwrap()), ids(&want));
        for kind in [IndexKind::Hnsw, IndexKind::Ivf, IndexKind::IvfPq] {
            let params = FaissParams {
                train_min: 1000,
                nprobe: 64,
                ..FaissParams::of(kind)
            };
            let idx = FaissIndex::build(params, dim, &e, &v).unwrap();
            let got = idx.search(q, 10, &filter).unwrap();
            for hits in &got {
                assert!(
                    hits.iter().all(
                        |h| filter.matches(&e[h.id as usize].split, &e[h.id as usize].category)
                    ),
                    "{kind:?} returned a vector the filter excludes"
                );
            }
            let agree: usize = got
                .iter()
                .zip(&want)
                .map(|(g, w)| g.iter().filter(|h| w.iter().any(|x| x.id == h.id)).count())
                .sum();
            // Product quantisation of uniform 24-d noise into 3 bytes loses much (measured
            // 229/500); a search ignoring the filter's ranking would find almost none.
            let least = if kind == IndexKind::IvfPq { 150 } else { 350 };
            assert!(agree >= least, "{kind:?} filtered recall@10 {agree}/500");
            assert_eq!(idx.approximate(), kind == IndexKind::IvfPq);
            if kind == IndexKind::IvfPq {
                // Re-scored from the exact vectors, 10 candidates per result find them all.
                let wide = idx.search(q, 100, &filter).unwrap();
                let agree: usize = wide
                    .iter()
                    .zip(q.chunks(dim))
                    .zip(&want)
                    .map(|((c, q), w)| {
                        let hits = super::super::rerank(q, c, 10, |ids| {
                            let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
                            Ok((
                                rows.iter().map(|&i| e[i].clone()).collect(),
                                rows.iter()
                                    .flat_map(|&i| v[i * dim..(i + 1) * dim].to_vec())
                                    .collect(),
                            ))
                        })
                        .unwrap();
                        hits.iter()
                            .filter(|h| w.iter().any(|x| x.id == h.id))
                            .count()
                    })
                    .sum();
                assert!(agree >= 490, "re-ranked IVF-PQ recall@10 {agree}/500");
            }
        }
        // A filter nothing passes finds nothing.
        let none = Filter::parse("nowhere", "");
        assert!(exact
            .search(q, 10, &none)
            .unwrap()
            .iter()
            .all(Vec::is_empty));
    }

    #[test]
    fn approximate_kinds_recall_well() {
        let (n, dim) = (2000, 32);
        let v = unit_vectors(n, dim, 11);
        let ids: Vec<i64> = (0..n as i64).collect();
        let e = entries(&ids);
        let all = Filter::all();
        let exact = FaissIndex::build(FaissParams::exact(), dim, &e, &v).unwrap();
        let q = &v[..100 * dim];
        let truth = exact.search(q, 1, &all).unwrap();
        for kind in [IndexKind::Hnsw, IndexKind::Ivf] {
            let params = FaissParams {
                train_min: 1000,
                ..FaissParams::of(kind)
            };
            let idx = FaissIndex::build(params, dim, &e, &v).unwrap();
            let got = idx.search(q, 1, &all).unwrap();
            let agree = got
                .iter()
                .zip(&truth)
                .filter(|(a, b)| a[0].id == b[0].id)
                .count();
            assert!(agree >= 90, "{kind:?} recall@1 {agree}/100");
        }
    }

    /// An IVF is exact (flat) below its training minimum, asks to be rebuilt once it is
    /// reached, is trained with √n cells when rebuilt, and asks again after four-fold growth.
    #[test]
    fn ivf_trains_once_there_are_enough_vectors_and_retrains_as_the_set_grows() {
        let dim = 8;
        let v = unit_vectors(8000, dim, 5);
        let ids: Vec<i64> = (0..8000).collect();
        let e = entries(&ids);
        let params = FaissParams {
            train_min: 1000,
            ..FaissParams::of(IndexKind::Ivf)
        };
        let mut small = FaissIndex::build(params, dim, &e[..500], &v[..500 * dim]).unwrap();
        assert_eq!(small.structure(), "flat");
        assert!(!small.wants_rebuild());
        small.add(&e[500..1000], &v[500 * dim..1000 * dim]).unwrap();
        assert!(
            small.wants_rebuild(),
            "1000 vectors reach the training minimum"
        );
        let mut trained = FaissIndex::build(params, dim, &e[..1000], &v[..1000 * dim]).unwrap();
        assert_eq!(
            trained.structure(),
            format!("ivf nlist={} nprobe=25", ideal_nlist(1000))
        );
        assert_eq!(ideal_nlist(1000), 25);
        trained
            .add(&e[1000..3999], &v[1000 * dim..3999 * dim])
            .unwrap();
        assert!(
            !trained.wants_rebuild(),
            "3999 vectors: under four times 1000"
        );
        trained
            .add(&e[3999..4000], &v[3999 * dim..4000 * dim])
            .unwrap();
        assert!(trained.wants_rebuild(), "four-fold growth retrains");
        // Removal works in place on a trained IVF, and on the persisted file.
        assert_eq!(trained.remove(&[0, 1, 2]).unwrap(), 3);
        assert_eq!(trained.len(), 3997);
        assert_eq!(trained_on(25), 975);
        assert_eq!(trained_on(1000), 1_000_000);
        assert_eq!(pq_subquantizers(1280), 128);
        assert_eq!(pq_subquantizers(1664), 128);
        assert_eq!(pq_subquantizers(1000), 125);
        assert_eq!(pq_subquantizers(16), 2);
    }

    #[test]
    fn garbage_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.faiss");
        std::fs::write(&path, b"not an index").unwrap();
        assert!(FaissIndex::load(&path, FaissParams::exact(), &[]).is_err());
    }
}
