//! Workspace: the engine on disk. Ties the metadata store, the FAISS index and the embedders
//! together: index folders incrementally (content-hash skips, embeddings reused by hash),
//! search by image or vector (filtered by split and category), and keep the vector index
//! consistent with the store — a stale or damaged FAISS file is rebuilt from the store's
//! vectors, a Milvus collection that disagrees with the store is reconciled id by id, so a
//! crash loses at most one batch. Re-indexing a folder removes the files that are gone.
//! The index holds one space: the visual embeddings, or (`EMBEDDING=fused`) those fused with
//! the embeddings of each image's text (`fusion`), whose text vectors the store keeps too.
//! With a VLM (`vlm`), every image indexed is captioned once per content and model, in batches
//! after its forward pass, and its text is the caption followed by the labels.
//!
//! Shared, not locked: every method takes `&self`, so one `Arc<Workspace>` serves searches,
//! uploads and an index job at once. The store is behind a mutex held only for single
//! statements or one batch's transaction, the index behind a read-write lock (searches read
//! it together; adding a batch writes it briefly), and no lock is held during a forward pass.
//! One writer (an index job, a rebuild, a removal) runs at a time.

use crate::dataset::LabeledFile;
use crate::decode::{decode_for, MAX_PIXELS};
use crate::embed::Embedder;
use crate::fusion::{image_text, text_of, EmbeddingKind, Fusion};
use crate::index::{Backend, Entry, FaissIndex, Filter, Hit, IndexConfig, IndexKind, VectorIndex};
use crate::settings::{Settings, IMAGE_TEXT_LABELS};
use crate::store::{ImageRow, NewImage, Store, TextKey, WithText};
use crate::vlm::{caption_view, Vlm, VlmPool, CAPTION_SHORTER};
use anyhow::{Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

mod augment;
mod text_search;
pub use text_search::TextQuery;

/// Least time between index checkpoints while indexing (the store commits every batch, so a
/// crash costs only a rebuild from it): writing a large index after every batch would spend
/// the job rewriting one file.
const CHECKPOINT_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// A checkpoint waits at least this many times as long as the last one took.
const CHECKPOINT_COST_FACTOR: u32 = 10;
/// Vectors sent to an index per call when reconciling it with the store.
const RECONCILE_CHUNK: usize = 4096;

/// What an indexing run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IndexReport {
    /// Newly embedded images.
    pub embedded: usize,
    /// Images recorded with an embedding reused from identical content.
    pub reused: usize,
    /// Images already indexed with the same content and model.
    pub skipped: usize,
    /// Files that could not be read or decoded, with the reason.
    pub failed: Vec<(String, String)>,
    /// Images indexed before whose files are gone from the folder, now removed.
    pub removed: usize,
}

/// One batch read, decoded and preprocessed, waiting for the forward pass.
#[derive(Default)]
struct Prepared {
    /// Rows complete without a forward pass (an embedding reused from identical content).
    rows: Vec<NewImage>,
    /// Rows whose embeddings `pixels` will give, in order.
    fresh: Vec<NewImage>,
    /// The preprocessed input of `fresh`, image after image.
    pixels: Vec<f32>,
    /// What the VLM is to see, by content hash (once each), scaled for it: images of `rows`
    /// and `fresh` with no caption under it yet, or (`EMBEDDING=vlm`) no VLM embedding.
    to_vlm: Vec<ForVlm>,
    skipped: usize,
    reused: usize,
    failed: Vec<(String, String)>,
}

/// An image the VLM is to caption, embed, or both.
struct ForVlm {
    hash: String,
    image: RgbImage,
    caption: bool,
    embed: bool,
}

/// A search result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Neighbour {
    pub id: i64,
    pub path: String,
    /// Content hash of the image file.
    pub hash: String,
    pub split: String,
    pub category: String,
    pub score: f32,
}

/// What a workspace does with its VLM besides the server's uploads.
#[derive(Debug, Clone, Copy)]
struct VlmUse {
    /// Caption every image indexed.
    captions: bool,
    /// Index its embeddings, so pooled (`EMBEDDING=vlm`).
    space: Option<VlmPool>,
}

/// Texts embedded per transaction when a fused workspace catches up on stored images.
const TEXT_BACKFILL_CHUNK: usize = 256;

/// The engine state behind every subcommand and the server.
pub struct Workspace {
    store: Mutex<Store>,
    embedder: Arc<Embedder>,
    /// The text side of a fused space; `None` when the space is visual.
    fusion: Option<Fusion>,
    /// The VLM, shared with the server (captions and zero-shot labels of uploads).
    vlm: Option<Arc<Vlm>>,
    /// Whether the VLM captions every image indexed (its text is then caption and labels).
    captions: bool,
    /// `EMBEDDING=vlm`: the id the VLM's embeddings of this space are stored under, and
    /// their pooling.
    vlm_space: Option<(String, VlmPool)>,
    /// What the index holds: the embedder's model id, or the fused space's id.
    space_id: String,
    index: RwLock<Option<Box<dyn VectorIndex>>>,
    config: IndexConfig,
    /// The FAISS file (`INDEX_BACKEND=faiss`).
    index_path: PathBuf,
    /// Held by whoever changes what is indexed, so changes do not interleave.
    writer: Mutex<()>,
    /// When the index was last made durable, and how long that took.
    last_checkpoint: Mutex<(Instant, Duration)>,
    /// Search by text: its model and index.
    text_side: text_search::TextSide,
    /// The indexed images augmented for database-side augmentation, once asked for.
    augmented: augment::AugmentedSide,
}

/// A poisoned lock means a thread panicked mid-change; the store's transactions keep the data
/// whole, so carry on with what is there.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workspace {
    /// Opens the workspace in `settings.home` with the configured model(s).
    pub fn open(settings: &Settings) -> Result<Self> {
        let config = settings.index_config();
        let space = settings.embedding;
        let embedder = Embedder::from_settings(settings)?;
        let fusion = match space {
            EmbeddingKind::Visual | EmbeddingKind::Vlm => None,
            EmbeddingKind::Fused => Some(Fusion::new(
                crate::text::load_text_embedder(settings)?,
                settings.fusion_weight,
            )?),
        };
        let vlm = Vlm::from_settings(settings)?.map(Arc::new);
        let vlm_pool = match (space, &vlm) {
            (EmbeddingKind::Vlm, None) => anyhow::bail!(
                "EMBEDDING=vlm needs a VLM: set VLM_PATH to a Qwen2-VL folder (or VLM to a hub id \
                 when online)"
            ),
            (EmbeddingKind::Vlm, Some(_)) => Some(settings.vlm_pool),
            _ => None,
        };
        let uses = VlmUse {
            captions: settings.index_captions,
            space: vlm_pool,
        };
        let mut ws = Self::open_inner(&settings.home, embedder, fusion, vlm, uses, config)?;
        let text_settings = settings.clone();
        ws.set_text_model(
            move || crate::text::load_text_embedder(&text_settings),
            settings.fusion_weight,
        )?;
        Ok(ws)
    }

    /// Opens the workspace in `home` with a loaded embedder, in the visual space.
    pub fn open_with(home: &Path, embedder: Embedder, kind: IndexKind) -> Result<Self> {
        Self::open_fused(home, embedder, None, kind)
    }

    /// Opens the workspace in `home` with a loaded embedder, in the fused space when `fusion`
    /// is given. Stored images whose text has no embedding under its text model yet get one.
    pub fn open_fused(
        home: &Path,
        embedder: Embedder,
        fusion: Option<Fusion>,
        kind: IndexKind,
    ) -> Result<Self> {
        Self::open_configured(home, embedder, fusion, IndexConfig::faiss(kind))
    }

    /// Opens the workspace in `home` with a loaded embedder, the fused space when `fusion` is
    /// given, and the vector index `config` chooses.
    pub fn open_configured(
        home: &Path,
        embedder: Embedder,
        fusion: Option<Fusion>,
        config: IndexConfig,
    ) -> Result<Self> {
        Self::open_with_vlm(home, embedder, fusion, None, config)
    }

    /// [`Self::open_configured`] with a VLM that captions what is indexed.
    pub fn open_with_vlm(
        home: &Path,
        embedder: Embedder,
        fusion: Option<Fusion>,
        vlm: Option<Arc<Vlm>>,
        config: IndexConfig,
    ) -> Result<Self> {
        let uses = VlmUse {
            captions: true,
            space: None,
        };
        Self::open_inner(home, embedder, fusion, vlm, uses, config)
    }

    /// Opens the workspace in `home` in the VLM's space (`EMBEDDING=vlm`): its embeddings
    /// pooled by `pool` are what is indexed and searched; with `captions`, what is indexed is
    /// captioned too (for search by text).
    pub fn open_vlm_space(
        home: &Path,
        embedder: Embedder,
        vlm: Arc<Vlm>,
        pool: VlmPool,
        captions: bool,
        config: IndexConfig,
    ) -> Result<Self> {
        let uses = VlmUse {
            captions,
            space: Some(pool),
        };
        Self::open_inner(home, embedder, None, Some(vlm), uses, config)
    }

    fn open_inner(
        home: &Path,
        embedder: Embedder,
        fusion: Option<Fusion>,
        vlm: Option<Arc<Vlm>>,
        uses: VlmUse,
        config: IndexConfig,
    ) -> Result<Self> {
        if config.backend == Backend::Milvus && !cfg!(feature = "milvus") {
            anyhow::bail!(
                "INDEX_BACKEND=milvus needs a kadr built with the milvus feature \
                 (cargo build --features milvus); this one has FAISS only"
            );
        }
        std::fs::create_dir_all(home)
            .with_context(|| format!("creating workspace {}", home.display()))?;
        let store = Store::open(&home.join("kadr.sqlite"))?;
        let captioner = vlm.as_deref().filter(|_| uses.captions).map(Vlm::id);
        let vlm_space = match (&vlm, uses.space) {
            (Some(v), Some(pool)) => Some((v.embedding_id(pool), pool)),
            _ => None,
        };
        let space_id = match (&fusion, &vlm_space) {
            (_, Some((id, _))) => format!("vlm({id})"),
            (Some(f), None) => f.model_id(embedder.model_id(), captioner),
            (None, None) => embedder.model_id().to_string(),
        };
        let safe_id: String = space_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let index_path =
            home.join(format!("index-{safe_id}-{:?}.faiss", config.kind()).to_lowercase());
        let ws = Self {
            store: Mutex::new(store),
            embedder: Arc::new(embedder),
            fusion,
            captions: uses.captions && vlm.is_some(),
            vlm,
            vlm_space,
            space_id,
            index: RwLock::new(None),
            config,
            index_path,
            writer: Mutex::new(()),
            last_checkpoint: Mutex::new((Instant::now(), Duration::ZERO)),
            text_side: Default::default(),
            augmented: Default::default(),
        };
        ws.backfill_texts()?;
        ws.load_or_rebuild_index()?;
        Ok(ws)
    }

    /// Embeds the texts of stored images that have none under the text model (images indexed
    /// visually, or with another text model), so the fused index covers them.
    fn backfill_texts(&self) -> Result<()> {
        let Some(f) = &self.fusion else {
            return Ok(());
        };
        let missing = self
            .store()
            .missing_texts(self.embedder.model_id(), self.text_key(f.text.model_id()))?;
        if !missing.is_empty() {
            tracing::info!("embedding the texts of {} stored images", missing.len());
        }
        for chunk in missing.chunks(TEXT_BACKFILL_CHUNK) {
            self.text_vectors(chunk)?;
        }
        Ok(())
    }

    /// The text embedding of each (content hash, text): from the store, or embedded now (and
    /// stored, so each is computed once). Needs a fused workspace.
    fn text_vectors(&self, items: &[(String, String)]) -> Result<Vec<Vec<f32>>> {
        let f = self.fusion.as_ref().context("not a fused workspace")?;
        self.text_vectors_with(&f.text, items)
    }

    /// [`Self::text_vectors`] under the text model `text`.
    fn text_vectors_with(
        &self,
        text: &crate::text::TextEmbedder,
        items: &[(String, String)],
    ) -> Result<Vec<Vec<f32>>> {
        let text_model = text.model_id();
        let mut out = Vec::with_capacity(items.len());
        let mut missing = Vec::new();
        {
            let store = self.store();
            for (i, (hash, text)) in items.iter().enumerate() {
                let v = store.text_embedding(hash, text_model, text)?;
                if v.is_none() {
                    missing.push(i);
                }
                out.push(v.unwrap_or_default());
            }
        }
        if !missing.is_empty() {
            let texts: Vec<&str> = missing.iter().map(|&i| items[i].1.as_str()).collect();
            let vectors = text.embed(&texts)?;
            let rows: Vec<(String, String, Vec<f32>)> = missing
                .iter()
                .zip(vectors)
                .map(|(&i, v)| (items[i].0.clone(), items[i].1.clone(), v))
                .collect();
            self.store().insert_text_embeddings(text_model, &rows)?;
            for (&i, (_, _, v)) in missing.iter().zip(rows) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Which text of its images this workspace embeds under `text_model`: with a VLM, caption
    /// and labels; without, the labels.
    fn text_key<'a>(&'a self, text_model: &'a str) -> TextKey<'a> {
        TextKey {
            text_model,
            vlm: self.captioner().map(Vlm::id),
        }
    }

    /// The VLM when it captions what is indexed.
    fn captioner(&self) -> Option<&Vlm> {
        self.vlm.as_deref().filter(|_| self.captions)
    }

    /// The text of an image with these labels: [`text_of`] with its stored caption.
    fn image_text(&self, hash: &str, labels: Option<&str>) -> Result<Option<String>> {
        let caption = match self.captioner() {
            Some(vlm) => self.store().caption(hash, vlm.id())?,
            None => None,
        };
        Ok(text_of(self.captions, caption.as_deref(), labels))
    }

    /// The index's vectors for rows just recorded: their embeddings, or fused ones.
    fn space_vectors(&self, rows: &[NewImage]) -> Result<Vec<f32>> {
        if let Some((id, _)) = &self.vlm_space {
            let store = self.store();
            let mut out = Vec::new();
            for r in rows {
                let v = store
                    .vlm_embedding(&r.hash, id)?
                    .with_context(|| format!("{} has no VLM embedding", r.path))?;
                out.extend(v);
            }
            return Ok(out);
        }
        if self.fusion.is_none() {
            return Ok(rows
                .iter()
                .flat_map(|r| r.embedding.iter().copied())
                .collect());
        }
        let items = rows
            .iter()
            .map(|r| {
                let text = self.image_text(&r.hash, r.labels.as_deref())?;
                Ok((r.hash.clone(), require_text(text)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let texts = self.text_vectors(&items)?;
        let f = self.fusion.as_ref().context("not a fused workspace")?;
        Ok(rows
            .iter()
            .zip(texts)
            .flat_map(|(r, t)| f.fuse(&r.embedding, &t))
            .collect())
    }

    /// The meta key under which the fingerprint of the indexed state is kept.
    fn meta_key(&self) -> String {
        match self.config.backend {
            Backend::Faiss => format!(
                "index:{}",
                self.index_path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            ),
            Backend::Milvus => format!(
                "index:milvus:{}:{}:{:?}",
                self.config.milvus_uri,
                self.space_id,
                self.config.kind()
            ),
        }
    }

    /// What the index must contain, as the store sees it.
    fn fingerprint(&self) -> Result<String> {
        if let Some((id, _)) = &self.vlm_space {
            return Ok(self
                .store()
                .vlm_fingerprint(self.embedder.model_id(), id)?
                .1);
        }
        match &self.fusion {
            None => self.store().fingerprint(self.embedder.model_id()),
            Some(f) => self
                .store()
                .fingerprint_with_text(self.embedder.model_id(), self.text_key(f.text.model_id())),
        }
    }

    /// Uses the saved index if it matches the store exactly; otherwise rebuilds a FAISS
    /// index, or reconciles a Milvus collection with the store.
    fn load_or_rebuild_index(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        let fingerprint = self.fingerprint()?;
        let trusted = self.store().meta(&self.meta_key())?.as_deref() == Some(fingerprint.as_str());
        match self.config.backend {
            Backend::Faiss => {
                if trusted && self.index_path.is_file() {
                    match self.load_faiss() {
                        Ok(Some(index)) => {
                            *self.index_mut() = Some(Box::new(index));
                            return Ok(());
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            "{} is unreadable, rebuilding it from the store: {e:#}",
                            self.index_path.display()
                        ),
                    }
                }
                self.rebuild_index_locked()
            }
            Backend::Milvus => {
                let Some(dim) = self.expected_dim()? else {
                    return Ok(());
                };
                let index = self.open_milvus(dim)?;
                let stored = self.space_len()?;
                let index = if trusted && index.len() == stored {
                    index
                } else {
                    self.reconcile(index)?
                };
                *self.index_mut() = Some(index);
                self.checkpoint()
            }
        }
    }

    /// The saved FAISS file, if it is of this space's dimension.
    fn load_faiss(&self) -> Result<Option<FaissIndex>> {
        let index = FaissIndex::load(&self.index_path, self.config.faiss, &self.space_entries()?)?;
        Ok(match self.expected_dim()? {
            // An index file of another model or space (copied over, say) is rebuilt.
            Some(dim) if dim != index.dim() => {
                tracing::warn!(
                    "{} holds {}-d vectors, the model gives {dim}-d: rebuilding it",
                    self.index_path.display(),
                    index.dim()
                );
                None
            }
            _ => Some(index),
        })
    }

    #[cfg(feature = "milvus")]
    fn open_milvus(&self, dim: usize) -> Result<Box<dyn VectorIndex>> {
        let cfg = crate::index::milvus::MilvusConfig::from(&self.config);
        Ok(Box::new(crate::index::milvus::MilvusIndex::open(
            &cfg,
            &self.space_id,
            dim,
        )?))
    }

    #[cfg(not(feature = "milvus"))]
    fn open_milvus(&self, _dim: usize) -> Result<Box<dyn VectorIndex>> {
        anyhow::bail!("this kadr was built without the milvus feature")
    }

    /// Brings an index that can list its ids in line with the store: removes what the store
    /// no longer has, adds what it lacks. One that cannot list them is rebuilt.
    fn reconcile(&self, mut index: Box<dyn VectorIndex>) -> Result<Box<dyn VectorIndex>> {
        let Some(have) = index.ids()? else {
            let (entries, data) = self.space_vectors_all()?;
            return self.new_index(data.len() / entries.len().max(1), &entries, &data);
        };
        let want: std::collections::BTreeSet<i64> =
            self.space_entries()?.iter().map(|e| e.id).collect();
        let have: std::collections::BTreeSet<i64> = have.into_iter().collect();
        let extra: Vec<i64> = have.difference(&want).copied().collect();
        let missing: Vec<i64> = want.difference(&have).copied().collect();
        if !extra.is_empty() || !missing.is_empty() {
            tracing::info!(
                "{}: adding {} vectors the store has, removing {} it has not",
                index.describe(),
                missing.len(),
                extra.len()
            );
        }
        if !extra.is_empty() {
            index.remove(&extra)?;
        }
        for chunk in missing.chunks(RECONCILE_CHUNK) {
            let (entries, data) = self.space_vectors_of(chunk)?;
            index.add(&entries, &data)?;
        }
        Ok(index)
    }

    /// A new index of the configured backend over these vectors (a Milvus collection is
    /// emptied first).
    fn new_index(
        &self,
        dim: usize,
        entries: &[Entry],
        data: &[f32],
    ) -> Result<Box<dyn VectorIndex>> {
        match self.config.backend {
            Backend::Faiss => Ok(Box::new(
                FaissIndex::build(self.config.faiss, dim, entries, data)?
                    .with_path(&self.index_path),
            )),
            Backend::Milvus => {
                #[cfg(feature = "milvus")]
                {
                    let cfg = crate::index::milvus::MilvusConfig::from(&self.config);
                    let mut m = crate::index::milvus::MilvusIndex::open(&cfg, &self.space_id, dim)?;
                    m.recreate()?;
                    for (e, d) in entries
                        .chunks(RECONCILE_CHUNK)
                        .zip(data.chunks(RECONCILE_CHUNK * dim))
                    {
                        m.add(e, d)?;
                    }
                    Ok(Box::new(m))
                }
                #[cfg(not(feature = "milvus"))]
                {
                    let _ = (dim, entries, data);
                    anyhow::bail!("this kadr was built without the milvus feature")
                }
            }
        }
    }

    /// The ids (with split and category) this space's index must hold.
    fn space_entries(&self) -> Result<Vec<Entry>> {
        if let Some((id, _)) = &self.vlm_space {
            return Ok(self
                .store()
                .vlm_vectors(self.embedder.model_id(), id, None)?
                .0);
        }
        match &self.fusion {
            None => self.store().entries(self.embedder.model_id()),
            Some(f) => self
                .store()
                .entries_with_text(self.embedder.model_id(), self.text_key(f.text.model_id())),
        }
    }

    /// How many vectors this space's index must hold.
    fn space_len(&self) -> Result<usize> {
        if let Some((id, _)) = &self.vlm_space {
            return Ok(self
                .store()
                .vlm_fingerprint(self.embedder.model_id(), id)?
                .0);
        }
        match &self.fusion {
            None => self.store().count(self.embedder.model_id()),
            Some(f) => self
                .store()
                .count_with_text(self.embedder.model_id(), self.text_key(f.text.model_id())),
        }
    }

    /// Every vector of this space, from the store.
    fn space_vectors_all(&self) -> Result<(Vec<Entry>, Vec<f32>)> {
        self.space_vectors_where(None)
    }

    /// The vectors of this space under `ids`, from the store.
    fn space_vectors_of(&self, ids: &[i64]) -> Result<(Vec<Entry>, Vec<f32>)> {
        self.space_vectors_where(Some(ids))
    }

    fn space_vectors_where(&self, ids: Option<&[i64]>) -> Result<(Vec<Entry>, Vec<f32>)> {
        let model = self.embedder.model_id();
        if let Some((id, _)) = &self.vlm_space {
            return self.store().vlm_vectors(model, id, ids);
        }
        match &self.fusion {
            None => match ids {
                None => self.store().all_vectors(model),
                Some(ids) => self.store().vectors_of(model, ids),
            },
            Some(f) => {
                let text_model = self.text_key(f.text.model_id());
                let pairs = match ids {
                    None => self.store().all_vector_pairs(model, text_model)?,
                    Some(ids) => self.store().vector_pairs_of(model, text_model, ids)?,
                };
                let (mut entries, mut data) = (Vec::new(), Vec::new());
                for (e, v, t) in pairs {
                    entries.push(e);
                    data.extend(f.fuse(&v, &t));
                }
                Ok((entries, data))
            }
        }
    }

    /// The dimension of this space's vectors, from what the store holds.
    fn expected_dim(&self) -> Result<Option<usize>> {
        if let Some((id, _)) = &self.vlm_space {
            return self.store().vlm_dim(id);
        }
        let visual = self.store().vector_dim(self.embedder.model_id())?;
        Ok(match &self.fusion {
            None => visual,
            Some(f) => visual.map(|v| v + f.text.dim()),
        })
    }

    /// Rebuilds the index from the store's vectors and saves it.
    pub fn rebuild_index(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        self.rebuild_index_locked()
    }

    /// [`Self::rebuild_index`] for a caller that holds the writer's lock.
    fn rebuild_index_locked(&self) -> Result<()> {
        let (entries, data) = self.space_vectors_all()?;
        let index = if entries.is_empty() {
            None
        } else {
            Some(self.new_index(data.len() / entries.len(), &entries, &data)?)
        };
        if let Some(i) = &index {
            tracing::info!("built {} over {} vectors", i.describe(), i.len());
        }
        *self.index_mut() = index;
        self.checkpoint()
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<Box<dyn VectorIndex>>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn index_ref(&self) -> std::sync::RwLockReadGuard<'_, Option<Box<dyn VectorIndex>>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the index durable (FAISS: the file, atomically; Milvus: a flush), then records
    /// which store state it reflects. Searches go on meanwhile: it runs under the index's
    /// read lock.
    pub fn checkpoint(&self) -> Result<()> {
        let started = Instant::now();
        let fingerprint = self.fingerprint()?;
        match &*self.index_ref() {
            Some(index) => index.persist()?,
            None if self.config.backend == Backend::Faiss => {
                let _ = std::fs::remove_file(&self.index_path);
            }
            None => {}
        }
        self.store().set_meta(&self.meta_key(), &fingerprint)?;
        *lock(&self.last_checkpoint) = (Instant::now(), started.elapsed());
        Ok(())
    }

    /// After a job: if the backend counts other than the store (a Milvus server that lost
    /// writes in a crash, say), reconciles it. The caller holds the writer's lock.
    fn verify_index(&self) -> Result<()> {
        let want = self.space_len()?;
        let have = match &*self.index_ref() {
            Some(index) => index.count()?,
            None => 0,
        };
        if have == want {
            return Ok(());
        }
        tracing::warn!("the index holds {have} vectors, the store {want}: reconciling");
        let index = self.index_mut().take();
        let index = match index {
            Some(index) => self.reconcile(index)?,
            None => {
                let (entries, data) = self.space_vectors_all()?;
                self.new_index(data.len() / entries.len().max(1), &entries, &data)?
            }
        };
        *self.index_mut() = Some(index);
        self.checkpoint()
    }

    /// A checkpoint if the last one is long enough ago (at least [`CHECKPOINT_MIN_INTERVAL`],
    /// and [`CHECKPOINT_COST_FACTOR`] times what it took), so a large job spends its time
    /// indexing, not rewriting the index.
    fn checkpoint_if_due(&self) -> Result<()> {
        let (at, cost) = *lock(&self.last_checkpoint);
        if at.elapsed() >= CHECKPOINT_MIN_INTERVAL.max(cost * CHECKPOINT_COST_FACTOR) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// What holds the vectors (`"faiss flat"`, `"milvus hnsw kadr_… at …"`).
    pub fn index_description(&self) -> String {
        match &*self.index_ref() {
            Some(i) => i.describe(),
            None => {
                format!("{:?} {:?} (empty)", self.config.backend, self.config.kind()).to_lowercase()
            }
        }
    }

    /// The embedder in use.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The embedder, to share with a [`crate::batcher::Batcher`].
    pub fn shared_embedder(&self) -> Arc<Embedder> {
        self.embedder.clone()
    }

    /// The text embedder and weight of a fused workspace.
    pub fn fusion(&self) -> Option<&Fusion> {
        self.fusion.as_ref()
    }

    /// The VLM that captions what is indexed, if one is configured.
    pub fn vlm(&self) -> Option<&Arc<Vlm>> {
        self.vlm.as_ref()
    }

    /// The caption of an image with content `hash` (stored, or made now from `img` when the
    /// content was never captioned); `None` without a VLM. A caption made here is not stored:
    /// only indexing adds to the store, which keeps an indexed image's text in step with it.
    pub fn caption_of(&self, hash: &str, img: RgbImage) -> Result<Option<String>> {
        let Some(vlm) = &self.vlm else {
            return Ok(None);
        };
        if let Some(c) = self.store().caption(hash, vlm.id())? {
            return Ok(Some(c));
        }
        Ok(vlm.caption(vec![img])?.pop())
    }

    /// An image's vector in the VLM space (`EMBEDDING=vlm`): the stored VLM embedding of
    /// content `hash`, or one made now from `img` (not stored, like [`Self::caption_of`]);
    /// `None` in other spaces.
    pub fn vlm_vector_of(&self, hash: &str, img: RgbImage) -> Result<Option<Vec<f32>>> {
        let (Some(vlm), Some((id, pool))) = (&self.vlm, &self.vlm_space) else {
            return Ok(None);
        };
        if let Some(v) = self.store().vlm_embedding(hash, id)? {
            return Ok(Some(v));
        }
        Ok(vlm.embed(vec![img], *pool)?.pop())
    }

    /// Whether this workspace indexes the VLM's embeddings (`EMBEDDING=vlm`).
    pub fn is_vlm_space(&self) -> bool {
        self.vlm_space.is_some()
    }

    /// The short side an image is decoded to for this workspace: what the backbone needs,
    /// or the VLM's caption size when that is larger.
    pub fn decode_shorter(&self) -> u32 {
        let backbone = self.embedder.preprocess_spec().resize_shorter;
        match &self.vlm {
            Some(_) => backbone.max(CAPTION_SHORTER),
            None => backbone,
        }
    }

    /// What the index holds: the visual model id, or the fused space's id (both model ids and
    /// the weight).
    pub fn space_id(&self) -> &str {
        &self.space_id
    }

    /// Stored images whose paths start with `prefix`, with their vectors in this space.
    pub fn vectors_under(&self, prefix: &str) -> Result<Vec<(ImageRow, Vec<f32>)>> {
        if let Some((id, _)) = &self.vlm_space {
            return self
                .store()
                .rows_under_with_vlm(self.embedder.model_id(), id, prefix);
        }
        match &self.fusion {
            None => self.store().rows_under(self.embedder.model_id(), prefix),
            Some(f) => Ok(self
                .vector_pairs_under(prefix)?
                .into_iter()
                .map(|(row, v, t)| (row, f.fuse(&v, &t)))
                .collect()),
        }
    }

    /// Stored images whose paths start with `prefix`, with their visual and text embeddings
    /// (a fused workspace; images without a text are left out).
    pub fn vector_pairs_under(&self, prefix: &str) -> Result<Vec<WithText<ImageRow>>> {
        let f = self.fusion.as_ref().context("not a fused workspace")?;
        self.store().rows_under_with_text(
            self.embedder.model_id(),
            self.text_key(f.text.model_id()),
            prefix,
        )
    }

    /// The metadata store, locked for the caller's statements: hold it briefly.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Number of indexed vectors.
    pub fn len(&self) -> usize {
        self.index_ref().as_ref().map_or(0, |i| i.len())
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexes `files`, a batch at a time; `progress(done)` is called after each batch.
    /// Unreadable files are reported, not fatal.
    ///
    /// Two stages overlap: while one batch is in the forward pass, the next is read, hashed,
    /// decoded and preprocessed (on the same rayon pool, which the forward pass leaves idle
    /// between its parallel sections). One batch is prepared ahead, so memory stays bounded.
    pub fn index_files(
        &self,
        files: &[LabeledFile],
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<IndexReport> {
        let _writer = lock(&self.writer);
        let mut report = IndexReport::default();
        let mut done = 0;
        let mut chunks = files.chunks(batch.max(1));
        let for_vlm = Mutex::new(std::collections::HashSet::new());
        let for_vlm = &for_vlm;
        std::thread::scope(|scope| -> Result<()> {
            let mut next = chunks.next().map(|c| (c, self.prepare_batch(c, for_vlm)));
            while let Some((chunk, prepared)) = next.take() {
                let Prepared {
                    mut rows,
                    mut fresh,
                    pixels,
                    to_vlm,
                    skipped,
                    reused,
                    failed,
                } = prepared?;
                let ahead = chunks
                    .next()
                    .map(|c| (c, scope.spawn(move || self.prepare_batch(c, for_vlm))));
                report.skipped += skipped;
                report.reused += reused;
                report.failed.extend(failed);
                if !fresh.is_empty() {
                    let out = self.embedder.embed_preprocessed_labelled(
                        &pixels,
                        fresh.len(),
                        IMAGE_TEXT_LABELS,
                    )?;
                    for (row, (v, labels)) in fresh.iter_mut().zip(out) {
                        row.embedding = v;
                        row.labels = image_text(&labels);
                    }
                    report.embedded += fresh.len();
                    rows.extend(fresh);
                }
                // The rows' texts need their captions, a VLM space their VLM embeddings: both
                // made before the rows are recorded.
                self.vlm_batch(to_vlm)?;
                self.add_rows(&rows)?;
                done += chunk.len();
                progress(done);
                self.checkpoint_if_due()?;
                next = ahead.map(|(c, h)| {
                    let prepared = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("decoding a batch panicked")));
                    (c, prepared)
                });
            }
            Ok(())
        })?;
        self.checkpoint()?;
        self.verify_index()?;
        Ok(report)
    }

    /// Captions and VLM-embeds images (batched) and stores the results by content hash.
    fn vlm_batch(&self, images: Vec<ForVlm>) -> Result<()> {
        let Some(vlm) = &self.vlm else {
            return Ok(());
        };
        let (mut caption, mut embed) = ((vec![], vec![]), (vec![], vec![]));
        for f in images {
            if f.embed && f.caption {
                embed.0.push(f.hash.clone());
                embed.1.push(f.image.clone());
            }
            let to = if f.caption { &mut caption } else { &mut embed };
            to.0.push(f.hash);
            to.1.push(f.image);
        }
        if !caption.0.is_empty() {
            let captions = vlm.caption(caption.1)?;
            let rows: Vec<(String, String)> = caption.0.into_iter().zip(captions).collect();
            self.store().insert_captions(vlm.id(), &rows)?;
        }
        if let (Some((id, pool)), false) = (&self.vlm_space, embed.0.is_empty()) {
            let vectors = vlm.embed(embed.1, *pool)?;
            let rows: Vec<(String, Vec<f32>)> = embed.0.into_iter().zip(vectors).collect();
            self.store().insert_vlm_embeddings(id, &rows)?;
        }
        Ok(())
    }

    /// The first stage of [`Self::index_files`] for one batch: reads and hashes the files,
    /// skips what is indexed already, reuses embeddings of known content, and decodes and
    /// preprocesses the rest into one tensor's data; with a VLM, also keeps the images whose
    /// content has no caption yet, scaled for it.
    ///
    /// `for_vlm` holds the contents sent to the VLM by this job so far: a batch is prepared
    /// while the one before is captioned, so the store cannot say yet.
    fn prepare_batch(
        &self,
        chunk: &[LabeledFile],
        for_vlm: &Mutex<std::collections::HashSet<String>>,
    ) -> Result<Prepared> {
        let model = self.embedder.model_id().to_string();
        let spec = self.embedder.preprocess_spec();
        let shorter = self.decode_shorter();
        let captioner = self.captioner().map(Vlm::id);
        let vlm_space = self.vlm_space.as_ref().map(|(id, _)| id.as_str());
        let mut out = Prepared::default();
        // Read and hash in parallel; the store (one SQLite connection) is asked serially.
        let read: Vec<(String, std::io::Result<Vec<u8>>)> = chunk
            .par_iter()
            .map(|f| {
                (
                    f.path.to_string_lossy().into_owned(),
                    std::fs::read(&f.path),
                )
            })
            .collect();
        // (row, bytes, needs the forward pass, needs a caption, needs a VLM embedding).
        let mut to_decode = Vec::new();
        let mut for_vlm = lock(for_vlm);
        let store = self.store();
        for (file, (path, bytes)) in chunk.iter().zip(read) {
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    out.failed.push((path, e.to_string()));
                    continue;
                }
            };
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let pending = for_vlm.contains(&hash);
            let caption = match captioner {
                Some(id) => !pending && store.caption(&hash, id)?.is_none(),
                None => false,
            };
            let vector = match vlm_space {
                Some(id) => !pending && store.vlm_embedding(&hash, id)?.is_none(),
                None => false,
            };
            if caption || vector {
                for_vlm.insert(hash.clone());
            }
            // A fused space also needs the labels, which rows stored before them lack.
            if matches!(store.hash_of_path(&model, &path)?, Some((_, h)) if h == hash)
                && (self.fusion.is_none() || store.has_labels(&model, &path)?)
                && !caption
                && !vector
                && !pending
            {
                out.skipped += 1;
                continue;
            }
            let mut row = NewImage {
                path,
                hash,
                split: file.split.clone(),
                category: file.category.clone(),
                width: 0,
                height: 0,
                embedding: Vec::new(),
                labels: None,
            };
            match store.embedding_by_hash(&model, &row.hash)? {
                Some((v, labels)) if self.fusion.is_none() || labels.is_some() => {
                    (row.embedding, row.labels) = (v, labels);
                    out.reused += 1;
                    if caption || vector {
                        to_decode.push((row, bytes, false, caption, vector));
                    } else {
                        out.rows.push(row);
                    }
                }
                _ => to_decode.push((row, bytes, true, caption, vector)),
            }
        }
        drop(store);
        drop(for_vlm);
        // Decode and preprocess in parallel on all cores.
        type Decoded = Result<(Option<Vec<f32>>, Option<RgbImage>), String>;
        let decoded: Vec<(NewImage, bool, bool, Decoded)> = to_decode
            .into_par_iter()
            .map(|(mut row, bytes, embed, caption, vector)| {
                let d = match decode_for(&bytes, MAX_PIXELS, shorter) {
                    Ok(d) => {
                        if embed {
                            (row.width, row.height) = (d.width, d.height);
                        }
                        let pixels = embed.then(|| crate::preprocess::preprocess(&d.image, &spec));
                        let view = (caption || vector).then(|| caption_view(d.image));
                        Ok((pixels, view))
                    }
                    Err(e) => Err(e.to_string()),
                };
                (row, caption, vector, d)
            })
            .collect();
        for (row, caption, embed, data) in decoded {
            match data {
                Ok((pixels, view)) => {
                    if let Some(image) = view {
                        out.to_vlm.push(ForVlm {
                            hash: row.hash.clone(),
                            image,
                            caption,
                            embed,
                        });
                    }
                    match pixels {
                        Some(p) => {
                            out.pixels.extend(p);
                            out.fresh.push(row);
                        }
                        None => out.rows.push(row),
                    }
                }
                Err(why) => out.failed.push((row.path, why)),
            }
        }
        Ok(out)
    }

    /// Records rows in the store (one transaction) and mirrors them into the index. The
    /// caller holds the writer's lock.
    fn add_rows(&self, rows: &[NewImage]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let data = self.space_vectors(rows)?;
        let (ids, replaced) = self.store().insert_batch(self.embedder.model_id(), rows)?;
        let entries: Vec<Entry> = ids
            .iter()
            .zip(rows)
            .map(|(&id, r)| Entry {
                id,
                split: r.split.clone(),
                category: r.category.clone(),
            })
            .collect();
        let mut index = self.index_mut();
        let rebuild = match &mut *index {
            Some(index) if replaced.is_empty() || index.supports_remove() => {
                if !replaced.is_empty() {
                    index.remove(&replaced)?;
                }
                index.add(&entries, &data)?;
                // An IVF that has outgrown its training.
                index.wants_rebuild()
            }
            Some(_) => true,
            None => {
                *index = Some(self.new_index(data.len() / ids.len(), &entries, &data)?);
                false
            }
        };
        drop(index);
        if rebuild {
            self.rebuild_index_locked()?;
        }
        Ok(())
    }

    /// Removes images by path; returns how many were indexed.
    pub fn remove_paths(&self, paths: &[String]) -> Result<usize> {
        let _writer = lock(&self.writer);
        self.remove_paths_locked(paths)
    }

    fn remove_paths_locked(&self, paths: &[String]) -> Result<usize> {
        let model = self.embedder.model_id();
        let mut ids = Vec::new();
        {
            let store = self.store();
            for p in paths {
                if let Some((id, _)) = store.hash_of_path(model, p)? {
                    ids.push(id);
                }
            }
        }
        self.remove_ids_locked(&ids)
    }

    /// Removes stored images by id from the store and the index. The caller holds the
    /// writer's lock.
    fn remove_ids_locked(&self, ids: &[i64]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut store = self.store();
        let n = store.remove(self.embedder.model_id(), ids)?;
        drop(store);
        // The write guard ends with this block: the checkpoint below reads the index.
        let rebuild = match &mut *self.index_mut() {
            Some(index) if index.supports_remove() => {
                index.remove(ids)?;
                false
            }
            Some(_) => true,
            None => false,
        };
        if rebuild {
            self.rebuild_index_locked()?;
        }
        self.checkpoint()?;
        Ok(n)
    }

    /// Removes the stored images under `prefix` (a folder, ending in the path separator)
    /// whose paths are not in `present`: files deleted since they were indexed. Returns how
    /// many were removed.
    pub fn remove_missing(
        &self,
        prefix: &str,
        present: &std::collections::HashSet<String>,
    ) -> Result<usize> {
        let _writer = lock(&self.writer);
        let gone: Vec<i64> = self
            .store()
            .paths_under(self.embedder.model_id(), prefix)?
            .into_iter()
            .filter(|(_, p)| !present.contains(p))
            .map(|(id, _)| id)
            .collect();
        if !gone.is_empty() {
            tracing::info!(
                "removing {} images whose files are gone from {prefix}",
                gone.len()
            );
        }
        self.remove_ids_locked(&gone)
    }

    /// The backbone's embedding of image bytes (any supported format): the visual space
    /// whatever this workspace indexes.
    pub fn embed_visual_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let spec = self.embedder.preprocess_spec();
        let img = decode_for(bytes, MAX_PIXELS, spec.resize_shorter)?.image;
        let data = crate::preprocess::preprocess(&img, &spec);
        Ok(self.embedder.embed_preprocessed(&data, 1)?.remove(0))
    }

    /// Embeds image bytes (any supported format) into this workspace's space: in a fused one,
    /// with the image's text made as an indexed image's is (caption and labels with a VLM).
    pub fn embed_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let spec = self.embedder.preprocess_spec();
        if self.vlm_space.is_some() {
            let img = decode_for(bytes, MAX_PIXELS, self.decode_shorter())?.image;
            let hash = blake3::hash(bytes).to_hex().to_string();
            return self
                .vlm_vector_of(&hash, caption_view(img))?
                .context("not a VLM space");
        }
        if self.fusion.is_none() {
            return self.embed_visual_bytes(bytes);
        }
        let img = decode_for(bytes, MAX_PIXELS, self.decode_shorter())?.image;
        let data = crate::preprocess::preprocess(&img, &spec);
        let (v, labels) = self
            .embedder
            .embed_preprocessed_labelled(&data, 1, IMAGE_TEXT_LABELS)?
            .remove(0);
        let hash = blake3::hash(bytes).to_hex().to_string();
        let caption = match self.captions {
            true => self.caption_of(&hash, caption_view(img))?,
            false => None,
        };
        self.fuse_query(&v, caption.as_deref(), image_text(&labels).as_deref())
    }

    /// A query's vector in this fused space from its visual embedding, caption and labels:
    /// its text made as an indexed image's is (the caption only when indexing captions).
    pub fn fuse_query(
        &self,
        visual: &[f32],
        caption: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Vec<f32>> {
        let f = self.fusion.as_ref().context("not a fused workspace")?;
        let text = text_of(self.captions, caption, labels);
        let t = f.text.embed(&[require_text(text)?])?.remove(0);
        Ok(f.fuse(visual, &t))
    }

    /// The `k` most similar indexed images to an embedding among those `filter` lets
    /// through. An index with approximate scores (IVF-PQ) is asked for `rerank` × `k`
    /// candidates, which are re-scored exactly against the stored vectors.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Neighbour>> {
        let (hits, refine): (Vec<Hit>, bool) = match &*self.index_ref() {
            None => return Ok(Vec::new()),
            Some(index) => {
                let refine = index.approximate() && self.config.rerank > 1;
                let wanted = if refine {
                    k.saturating_mul(self.config.rerank)
                } else {
                    k
                };
                let hits = index.search(query, wanted, filter)?.into_iter().next();
                (hits.unwrap_or_default(), refine)
            }
        };
        // After the index's lock: re-ranking reads the store.
        let hits = if refine {
            crate::index::rerank(query, &hits, k, |ids| self.space_vectors_of(ids))?
        } else {
            hits
        };
        self.neighbours(hits)
    }
}

impl Workspace {
    /// [`Self::search`] with the query first expanded by its `qe.n` best neighbours among
    /// those `filter` lets through (query expansion; with `qe` off, a plain search).
    pub fn search_expanded(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        qe: &crate::expand::Expansion,
    ) -> Result<Vec<Neighbour>> {
        if qe.is_off() {
            return self.search(query, k, filter);
        }
        let first = self.search(query, qe.n, filter)?;
        let ids: Vec<i64> = first.iter().map(|h| h.id).collect();
        let (entries, data) = self.space_vectors_of(&ids)?;
        let dim = query.len();
        let neighbours = first.iter().filter_map(|h| {
            let i = entries.iter().position(|e| e.id == h.id)?;
            Some((&data[i * dim..(i + 1) * dim], h.score))
        });
        let expanded = qe.expand(query, neighbours);
        self.search(&expanded, k, filter)
    }
}

/// An image's text, which a fused space cannot do without.
fn require_text(text: Option<String>) -> Result<String> {
    text.context(
        "EMBEDDING=fused needs each image's text: a VLM's caption (VLM / VLM_PATH) or the labels \
         of an ImageNet-1k classifier (the default tf_efficientnet_lite0 has one); or use \
         EMBEDDING=visual",
    )
}
