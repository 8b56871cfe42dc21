//! Workspace: the engine on disk. Ties the metadata store, the FAISS index and the embedder
//! together: index folders incrementally (content-hash skips, embeddings reused by hash),
//! search by image or vector, and keep the index file consistent with the store — a stale or
//! damaged index file is rebuilt from the store's vectors, so a crash loses at most one batch.

use crate::config::Settings;
use crate::dataset::LabeledFile;
use crate::decode::decode;
use crate::embed::Embedder;
use crate::index::{Hit, IndexKind, VectorIndex};
use crate::store::{ImageRow, NewImage, Store};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Batches between index checkpoints while indexing (the store commits every batch).
const CHECKPOINT_EVERY: usize = 20;

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

/// The engine state behind every subcommand and the server.
pub struct Workspace {
    store: Store,
    embedder: Embedder,
    index: Option<VectorIndex>,
    kind: IndexKind,
    index_path: PathBuf,
}

impl Workspace {
    /// Opens the workspace in `settings.home` with the configured model.
    pub fn open(settings: &Settings) -> Result<Self> {
        let embedder = Embedder::from_settings(settings)?;
        Self::open_with(&settings.home, embedder, settings.index_kind.parse()?)
    }

    /// Opens the workspace in `home` with a loaded embedder.
    pub fn open_with(home: &Path, embedder: Embedder, kind: IndexKind) -> Result<Self> {
        std::fs::create_dir_all(home)
            .with_context(|| format!("creating workspace {}", home.display()))?;
        let store = Store::open(&home.join("kadr.sqlite"))?;
        let safe_id: String = embedder
            .model_id()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let index_path = home.join(format!("index-{safe_id}-{kind:?}.faiss").to_lowercase());
        let mut ws = Self {
            store,
            embedder,
            index: None,
            kind,
            index_path,
        };
        ws.load_or_rebuild_index()?;
        Ok(ws)
    }

    fn meta_key(&self) -> String {
        format!(
            "index:{}",
            self.index_path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        )
    }

    /// Uses the saved index if it matches the store exactly; otherwise rebuilds it.
    fn load_or_rebuild_index(&mut self) -> Result<()> {
        let fingerprint = self.store.fingerprint(self.embedder.model_id())?;
        if self.index_path.is_file()
            && self.store.meta(&self.meta_key())?.as_deref() == Some(fingerprint.as_str())
        {
            match VectorIndex::load(&self.index_path, self.kind) {
                Ok(index) => {
                    self.index = Some(index);
                    return Ok(());
                }
                Err(e) => tracing::warn!("rebuilding the index: {e:#}"),
            }
        }
        self.rebuild_index()
    }

    /// Rebuilds the index from the store's vectors and saves it.
    pub fn rebuild_index(&mut self) -> Result<()> {
        let (ids, data) = self.store.all_vectors(self.embedder.model_id())?;
        self.index = if ids.is_empty() {
            None
        } else {
            Some(VectorIndex::build(
                self.kind,
                data.len() / ids.len(),
                &ids,
                &data,
            )?)
        };
        self.checkpoint()
    }

    /// Saves the index atomically, then records which store state it reflects.
    pub fn checkpoint(&mut self) -> Result<()> {
        let fingerprint = self.store.fingerprint(self.embedder.model_id())?;
        match &self.index {
            Some(index) => index.save(&self.index_path)?,
            None => {
                let _ = std::fs::remove_file(&self.index_path);
            }
        }
        self.store.set_meta(&self.meta_key(), &fingerprint)
    }

    /// The embedder in use.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Number of indexed vectors.
    pub fn len(&self) -> usize {
        self.index.as_ref().map_or(0, VectorIndex::len)
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexes `files`, a batch at a time; `progress(done)` is called after each batch.
    /// Unreadable files are reported, not fatal.
    pub fn index_files(
        &mut self,
        files: &[LabeledFile],
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<IndexReport> {
        let mut report = IndexReport::default();
        let model = self.embedder.model_id().to_string();
        let spec = self.embedder.preprocess_spec();
        let mut done = 0;
        for (n, chunk) in files.chunks(batch.max(1)).enumerate() {
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
            let mut rows = Vec::new();
            let mut to_decode = Vec::new();
            for (file, (path, bytes)) in chunk.iter().zip(read) {
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(e) => {
                        report.failed.push((path, e.to_string()));
                        continue;
                    }
                };
                let hash = blake3::hash(&bytes).to_hex().to_string();
                if matches!(self.store.hash_of_path(&model, &path)?, Some((_, h)) if h == hash) {
                    report.skipped += 1;
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
                };
                match self.store.embedding_by_hash(&model, &row.hash)? {
                    Some(v) => {
                        row.embedding = v;
                        report.reused += 1;
                        rows.push(row);
                    }
                    None => to_decode.push((row, bytes)),
                }
            }
            // Decode and preprocess in parallel on all cores.
            let decoded: Vec<(NewImage, Result<Vec<f32>, String>)> = to_decode
                .into_par_iter()
                .map(|(mut row, bytes)| match decode(&bytes) {
                    Ok(img) => {
                        (row.width, row.height) = img.dimensions();
                        (row, Ok(crate::preprocess::preprocess(&img, &spec)))
                    }
                    Err(e) => (row, Err(e.to_string())),
                })
                .collect();
            let mut pixels = Vec::new();
            let mut fresh = Vec::new();
            for (row, data) in decoded {
                match data {
                    Ok(d) => {
                        pixels.extend(d);
                        fresh.push(row);
                    }
                    Err(why) => report.failed.push((row.path, why)),
                }
            }
            if !fresh.is_empty() {
                let vectors = self.embedder.embed_preprocessed(&pixels, fresh.len())?;
                for (row, v) in fresh.iter_mut().zip(vectors) {
                    row.embedding = v;
                }
                report.embedded += fresh.len();
                rows.extend(fresh);
            }
            self.add_rows(&rows)?;
            done += chunk.len();
            progress(done);
            if (n + 1) % CHECKPOINT_EVERY == 0 {
                self.checkpoint()?;
            }
        }
        self.checkpoint()?;
        Ok(report)
    }

    /// Records rows in the store (one transaction) and mirrors them into the index.
    fn add_rows(&mut self, rows: &[NewImage]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (ids, replaced) = self.store.insert_batch(self.embedder.model_id(), rows)?;
        let data: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.embedding.iter().copied())
            .collect();
        match &mut self.index {
            Some(index) if replaced.is_empty() || self.kind.supports_remove() => {
                index.remove(&replaced).ok();
                index.add(&ids, &data)?;
            }
            Some(_) => self.rebuild_index()?,
            None => {
                self.index = Some(VectorIndex::build(
                    self.kind,
                    data.len() / ids.len(),
                    &ids,
                    &data,
                )?)
            }
        }
        Ok(())
    }

    /// Removes images by path; returns how many were indexed.
    pub fn remove_paths(&mut self, paths: &[String]) -> Result<usize> {
        let model = self.embedder.model_id().to_string();
        let mut ids = Vec::new();
        for p in paths {
            if let Some((id, _)) = self.store.hash_of_path(&model, p)? {
                ids.push(id);
            }
        }
        let n = self.store.remove(&ids)?;
        match &mut self.index {
            Some(index) if self.kind.supports_remove() => {
                index.remove(&ids)?;
            }
            _ => self.rebuild_index()?,
        }
        self.checkpoint()?;
        Ok(n)
    }

    /// Embeds decoded-image bytes (any supported format).
    pub fn embed_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let img = decode(bytes)?;
        Ok(self
            .embedder
            .embed_images(std::slice::from_ref(&img))?
            .remove(0))
    }

    /// The `k` most similar indexed images to an embedding.
    pub fn search(&mut self, query: &[f32], k: usize) -> Result<Vec<Neighbour>> {
        let Some(index) = &mut self.index else {
            return Ok(Vec::new());
        };
        let hits: Vec<Hit> = index
            .search(query, k)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let ids: Vec<i64> = hits.iter().map(|h| h.id).collect();
        let rows = self.store.rows(&ids)?;
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                rows.get(&h.id).map(|r: &ImageRow| Neighbour {
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
