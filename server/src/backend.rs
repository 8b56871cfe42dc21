//! The engine as the web app sees it: [`app::backend::Backend`] implemented over a
//! [`Workspace`] (index), a [`History`] (what was analysed) and the dataset folders, plus the
//! background jobs the dataset page starts. Server functions and the REST handlers in
//! [`crate::api`] reach the engine only through this.

use crate::config::Settings;
use crate::decode::decode_limited;
use crate::embed::imagenet_class;
use crate::eval::Report;
use crate::history::{History, Record};
use crate::jobs::{eval_folder, EvalMode};
use crate::vote::VoteConfig;
use crate::workspace::Workspace;
use anyhow::Context;
use app::errors::ApiError;
use app::types::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// ImageNet labels shown as the text analysis when no VLM is configured.
const TEXT_LABELS: usize = 5;
/// Files indexed per lock of the workspace in a job, so uploads are served in between.
const JOB_CHUNK: usize = 64;
/// Longest dataset folder path accepted, in bytes (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;
/// Points on the dashboard's embedding map at most.
const MAP_POINTS: usize = 3000;

/// The web app's engine.
#[derive(Clone)]
pub struct EngineBackend {
    inner: Arc<Inner>,
}

struct Inner {
    ws: Mutex<Workspace>,
    /// The optional vision-language model (captions, zero-shot labels).
    vlm: Option<Mutex<crate::vlm::processor::Qwen2Vl>>,
    caption_tokens: usize,
    /// Id of the visual model: the key of indexed images in the store.
    visual_model: String,
    history: Mutex<History>,
    defaults: UiDefaults,
    home: PathBuf,
    device: String,
    index_batch: usize,
    /// Where `AddFolder` may look (empty: only the folders given at start).
    data_roots: Vec<PathBuf>,
    folders: Mutex<Vec<PathBuf>>,
    jobs: Mutex<Vec<JobStatus>>,
    started: Instant,
    /// Bounds the uploads being embedded and waiting.
    queue: crate::queue::WorkQueue,
    /// Largest image decoded, in pixels.
    max_pixels: u64,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, ApiError> {
    m.lock()
        .map_err(|_| ApiError::internal("the engine is unavailable after an earlier failure"))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("{e:#}");
    ApiError::internal(format!("{e:#}"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn ms(t: Instant) -> f32 {
    t.elapsed().as_secs_f32() * 1000.0
}

/// The general kind of a refusal ("corrupt or truncated PNG image: ..." → before the colon).
fn reason_kind(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason).trim()
}

impl EngineBackend {
    /// Wraps an open workspace serving `folders` (already indexed by the caller), with the
    /// VLM when one is configured.
    pub fn new(ws: Workspace, settings: &Settings, folders: Vec<PathBuf>) -> anyhow::Result<Self> {
        let vlm = match settings.vlm() {
            Some((repo, local)) => {
                let device = crate::embed::parse_device(&settings.device)?;
                Some(crate::vlm::load(&repo, local.as_deref(), &device)?)
            }
            None => None,
        };
        Self::with_vlm(ws, settings, folders, vlm)
    }

    /// Like [`Self::new`], with an already loaded VLM (or none).
    pub fn with_vlm(
        ws: Workspace,
        settings: &Settings,
        folders: Vec<PathBuf>,
        vlm: Option<crate::vlm::processor::Qwen2Vl>,
    ) -> anyhow::Result<Self> {
        let history = History::open(&settings.home.join("history.sqlite"))?;
        // Analyses are kept per vector space (the visual model, or the fused space).
        let model = ws.space_id().to_string();
        let ws_visual_model = ws.embedder().model_id().to_string();
        let folders = folders
            .into_iter()
            .map(|f| {
                f.canonicalize()
                    .with_context(|| format!("resolving {}", f.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data_roots = settings
            .data_roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                ws: Mutex::new(ws),
                caption_tokens: settings.caption_tokens,
                visual_model: ws_visual_model,
                history: Mutex::new(history),
                defaults: UiDefaults {
                    tuning: Tuning {
                        threshold: settings.threshold,
                        ..Tuning::default()
                    },
                    batch_size: settings.upload_batch,
                    upload_max_side: settings.upload_max_side,
                    max_upload_bytes: settings.max_upload_bytes,
                    vlm: vlm.is_some(),
                    model,
                },
                home: settings.home.clone(),
                device: settings.device.clone(),
                index_batch: settings.max_batch_size,
                data_roots,
                folders: Mutex::new(folders),
                jobs: Mutex::new(Vec::new()),
                started: Instant::now(),
                queue: crate::queue::WorkQueue::new(
                    settings.embed_workers,
                    settings.queue_depth,
                    std::time::Duration::from_secs(settings.queue_timeout_s),
                ),
                max_pixels: settings.max_pixels,
                vlm: vlm.map(Mutex::new),
            }),
        })
    }

    fn model(&self) -> &str {
        &self.inner.defaults.model
    }

    /// Where an uploaded file's bytes are kept.
    fn upload_path(&self, hash: &str) -> PathBuf {
        self.inner.home.join("uploads").join(hash)
    }

    /// `path` relative to the dataset folder holding it.
    fn relative(&self, path: &str) -> String {
        // Called for every hit: look through the folders under the lock, without copying them.
        let Ok(folders) = self.inner.folders.lock() else {
            return path.to_string();
        };
        folders
            .iter()
            .find_map(|f| Path::new(path).strip_prefix(f).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    }

    /// The top [`MAX_K`] hits for an embedding.
    fn hits(&self, embedding: &[f32]) -> Result<Vec<Hit>, ApiError> {
        let found = lock(&self.inner.ws)?
            .search(embedding, MAX_K)
            .map_err(internal)?;
        Ok(found
            .into_iter()
            .map(|n| Hit {
                hash: n.hash,
                path: self.relative(&n.path),
                split: n.split,
                category: n.category,
                score: n.score,
            })
            .collect())
    }

    fn to_analysis(&self, r: Record, search_ms: Option<f32>) -> Result<Analysis, ApiError> {
        let t = Instant::now();
        let hits = self.hits(&r.embedding)?;
        let mut timings = r.timings;
        timings.search_ms = search_ms.unwrap_or_else(|| ms(t));
        Ok(Analysis {
            hash: r.hash,
            name: r.name,
            width: r.width,
            height: r.height,
            hits,
            text: r.text,
            timings,
            created_at: r.created_at,
            indexed_category: r.indexed_category,
        })
    }

    /// 422 when a category rule names a category the index does not have (a typo would
    /// otherwise silently do nothing).
    pub fn check_categories(&self, cfg: &VoteConfig) -> Result<(), ApiError> {
        let rules = &cfg.rules;
        if rules.rename.is_empty() && rules.ignore.is_empty() {
            return Ok(());
        }
        let known: std::collections::BTreeSet<String> = lock(&self.inner.ws)?
            .store()
            .counts(&self.inner.visual_model)
            .map_err(internal)?
            .into_iter()
            .map(|(_, c, _)| c)
            .collect();
        let list = || {
            let mut names: Vec<&str> = known.iter().map(String::as_str).take(20).collect();
            if known.len() > 20 {
                names.push("…");
            }
            names.join(", ")
        };
        if let Some(from) = rules.rename.keys().find(|c| !known.contains(*c)) {
            return Err(ApiError::invalid(
                "rename",
                format!("unknown category {from:?} (known: {})", list()),
            ));
        }
        let targets: std::collections::BTreeSet<&String> = rules.rename.values().collect();
        if let Some(c) = rules
            .ignore
            .iter()
            .find(|c| !known.contains(*c) && !targets.contains(c))
        {
            return Err(ApiError::invalid(
                "ignore",
                format!("unknown category {c:?} (known: {})", list()),
            ));
        }
        Ok(())
    }

    /// A place in the embedding queue, for other work that decodes images (thumbnails).
    pub async fn admit(&self) -> Result<app::backend::QueueSlot, ApiError> {
        self.inner.queue.admit().await
    }

    /// Vectors in the index now, without waiting for the engine (`None` while it is busy).
    pub fn index_len_now(&self) -> Option<u64> {
        self.inner.ws.try_lock().ok().map(|ws| ws.len() as u64)
    }

    /// Decodes, embeds and describes `bytes`; the record is not stored. A file that cannot be
    /// decoded is the caller's 4xx, naming it; the engine failing is a 500.
    fn embed_record(&self, name: &str, hash: &str, bytes: &[u8]) -> Result<Record, ApiError> {
        fn unavailable<T>(_: T) -> ApiError {
            ApiError::internal("the engine is unavailable")
        }
        let t = Instant::now();
        let img = decode_limited(bytes, self.inner.max_pixels).map_err(|e| {
            metrics::counter!("kadr_refused_files_total", "kind" => e.kind()).increment(1);
            ApiError::file(e.status(), name, e.to_string())
        })?;
        let decode_ms = ms(t);
        let t = Instant::now();
        let (visual, classes, categories) = {
            let ws = self.inner.ws.lock().map_err(unavailable)?;
            let (v, c) = ws
                .embedder()
                .embed_and_classify(&img, TEXT_LABELS)
                .map_err(|e| internal(format!("embedding failed: {e:#}")))?;
            let mut categories: Vec<String> = match &self.inner.vlm {
                Some(_) => ws
                    .store()
                    .counts(ws.embedder().model_id())
                    .map_err(internal)?
                    .into_iter()
                    .map(|(_, c, _)| c)
                    .filter(|c| !c.is_empty())
                    .collect(),
                None => Vec::new(),
            };
            categories.sort();
            categories.dedup();
            (v, c, categories)
        };
        let mut embed_ms = ms(t);
        let names: Vec<&str> = classes
            .iter()
            .filter_map(|&(i, _)| imagenet_class(i))
            .collect();
        let t = Instant::now();
        let text = match &self.inner.vlm {
            Some(vlm) => {
                let mut vlm = vlm.lock().map_err(unavailable)?;
                let caption = vlm
                    .caption(std::slice::from_ref(&img), self.inner.caption_tokens)
                    .map_err(|e| internal(format!("captioning failed: {e:#}")))?
                    .pop();
                // Zero-shot needs something to choose between.
                let mut labels: Vec<ScoredLabel> = if categories.len() >= 2 {
                    vlm.zero_shot(&img, &categories)
                        .map_err(|e| internal(format!("zero-shot labelling failed: {e:#}")))?
                        .into_iter()
                        .map(|(label, score)| ScoredLabel { label, score })
                        .collect()
                } else {
                    Vec::new()
                };
                labels.sort_by(|a, b| b.score.total_cmp(&a.score));
                labels.truncate(TEXT_LABELS);
                TextAnalysis {
                    source: TextSource::Vlm,
                    caption,
                    labels,
                }
            }
            None => TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: classes
                    .iter()
                    .filter_map(|&(i, p)| {
                        imagenet_class(i).map(|l| ScoredLabel {
                            label: l.to_string(),
                            score: p,
                        })
                    })
                    .collect(),
            },
        };
        let text_ms = ms(t);
        // In a fused space the query is fused the way the index was: with the label text.
        let t = Instant::now();
        let embedding = {
            let ws = self.inner.ws.lock().map_err(unavailable)?;
            match ws.fusion() {
                None => visual,
                Some(f) => {
                    let words = crate::fusion::image_text(&names)
                        .ok_or_else(|| internal("the backbone gives no labels to fuse with"))?;
                    let t = f
                        .text
                        .embed(&[words])
                        .map_err(|e| internal(format!("text embedding failed: {e:#}")))?
                        .remove(0);
                    f.fuse(&visual, &t)
                }
            }
        };
        embed_ms += ms(t);
        Ok(Record {
            hash: hash.to_string(),
            name: name.to_string(),
            width: img.width(),
            height: img.height(),
            embedding,
            text,
            timings: StageTimings {
                decode_ms,
                embed_ms,
                text_ms,
                ..Default::default()
            },
            created_at: now(),
            indexed_category: None,
        })
    }

    fn refused(&self, name: &str, error: ApiError) -> FileOutcome {
        if error.status < 500 {
            if let Ok(h) = self.inner.history.lock() {
                if let Err(e) = h.refuse(name, reason_kind(&error.message)) {
                    tracing::error!("recording a refusal: {e:#}");
                }
            }
        }
        FileOutcome {
            name: name.to_string(),
            analysis: None,
            error: Some(ApiError {
                field: Some(name.to_string()),
                ..error
            }),
            cached: false,
        }
    }

    fn analyse_inner(&self, name: &str, bytes: &[u8]) -> Result<FileOutcome, ApiError> {
        if bytes.is_empty() {
            metrics::counter!("kadr_refused_files_total", "kind" => "empty").increment(1);
            return Ok(self.refused(name, ApiError::file(422, name, "empty file")));
        }
        let hash = blake3::hash(bytes).to_hex().to_string();
        let cached = lock(&self.inner.history)?
            .get(self.model(), &hash)
            .map_err(internal)?;
        if let Some(record) = cached {
            let mut analysis = self.to_analysis(record, None)?;
            // The name the user gave this time.
            analysis.name = name.to_string();
            return Ok(FileOutcome {
                name: name.to_string(),
                analysis: Some(analysis),
                error: None,
                cached: true,
            });
        }
        let record = match self.embed_record(name, &hash, bytes) {
            Ok(r) => r,
            Err(why) => return Ok(self.refused(name, why)),
        };
        metrics::counter!("kadr_images_embedded_total", "source" => "upload").increment(1);
        // Keep the bytes for the permanent page; write-then-rename so no half file is served.
        let path = self.upload_path(&hash);
        if !path.exists() {
            let dir = path.parent().expect("uploads folder");
            std::fs::create_dir_all(dir).map_err(internal)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(internal)?;
            std::io::Write::write_all(&mut tmp, bytes).map_err(internal)?;
            tmp.persist(&path).map_err(internal)?;
        }
        lock(&self.inner.history)?
            .put(self.model(), &record)
            .map_err(internal)?;
        Ok(FileOutcome {
            name: name.to_string(),
            analysis: Some(self.to_analysis(record, None)?),
            error: None,
            cached: false,
        })
    }

    /// The file behind content `hash`: an upload or an indexed image.
    pub fn image_file(&self, hash: &str) -> Result<PathBuf, ApiError> {
        let upload = self.upload_path(hash);
        if upload.is_file() {
            return Ok(upload);
        }
        let row = lock(&self.inner.ws)?
            .store()
            .row_by_hash(&self.inner.visual_model, hash)
            .map_err(internal)?;
        row.map(|(r, _)| PathBuf::from(r.path))
            .ok_or_else(|| ApiError::not_found(format!("no image with hash {hash}")))
    }

    /// Folder for cached thumbnails.
    pub fn thumbs_dir(&self) -> PathBuf {
        self.inner.home.join("thumbs")
    }

    /// The analyses of `hashes`, in order; unknown ones are an error naming them.
    pub fn analyses(&self, hashes: &[String]) -> Result<Vec<Analysis>, ApiError> {
        hashes.iter().map(|h| self.analysis_inner(h)).collect()
    }

    /// `/status`.
    pub fn status(&self) -> Result<ServerStatus, ApiError> {
        Ok(ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.model().to_string(),
            device: self.inner.device.clone(),
            index_size: lock(&self.inner.ws)?.len() as u64,
            uptime_s: self.inner.started.elapsed().as_secs(),
            vlm: self.inner.defaults.vlm,
        })
    }

    fn analysis_inner(&self, hash: &str) -> Result<Analysis, ApiError> {
        let record = lock(&self.inner.history)?
            .get(self.model(), hash)
            .map_err(internal)?;
        if let Some(r) = record {
            return self.to_analysis(r, None);
        }
        // An indexed image: analyse its file (once) so it gets a page like any upload.
        let row = lock(&self.inner.ws)?
            .store()
            .row_by_hash(&self.inner.visual_model, hash)
            .map_err(internal)?;
        let Some((row, _)) = row else {
            return Err(ApiError::not_found(format!(
                "nothing analysed or indexed has hash {hash}"
            )));
        };
        let bytes = std::fs::read(&row.path)
            .map_err(|e| ApiError::not_found(format!("{} is gone: {e}", row.path)))?;
        let mut record = self.embed_record(&self.relative(&row.path), hash, &bytes)?;
        record.indexed_category = Some(row.category);
        lock(&self.inner.history)?
            .put(self.model(), &record)
            .map_err(internal)?;
        self.to_analysis(record, None)
    }

    fn run_job(&self, id: u64, request: JobRequest) -> anyhow::Result<String> {
        let set = |done: usize, total: usize| {
            if let Ok(mut jobs) = self.inner.jobs.lock() {
                if let Some(j) = jobs.iter_mut().find(|j| j.id == id) {
                    j.done = done as u64;
                    j.total = total as u64;
                }
            }
        };
        let folders = match &request {
            JobRequest::AddFolder { folder } => vec![PathBuf::from(folder)],
            _ => self
                .inner
                .folders
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default(),
        };
        match request {
            JobRequest::AddFolder { .. } | JobRequest::Reindex => {
                let mut files = Vec::new();
                for f in &folders {
                    files.extend(crate::dataset::scan(f)?);
                }
                let total = files.len();
                let mut embedded = 0;
                let mut failed = 0;
                for (i, chunk) in files.chunks(JOB_CHUNK).enumerate() {
                    let mut ws = self
                        .inner
                        .ws
                        .lock()
                        .map_err(|_| anyhow::anyhow!("the engine is unavailable"))?;
                    let r = ws.index_files(chunk, self.inner.index_batch, &|_| {})?;
                    embedded += r.embedded + r.reused;
                    failed += r.failed.len();
                    metrics::counter!("kadr_images_embedded_total", "source" => "index")
                        .increment(r.embedded as u64);
                    drop(ws);
                    set(((i + 1) * JOB_CHUNK).min(total), total);
                }
                Ok(format!(
                    "{total} images in {} folder(s): {embedded} newly indexed, {failed} unreadable",
                    folders.len()
                ))
            }
            JobRequest::Evaluate => {
                let folder = folders
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no dataset folder to evaluate: add one first"))?
                    .clone();
                let cfg = VoteConfig::default();
                let (report, _) = {
                    let mut ws = self
                        .inner
                        .ws
                        .lock()
                        .map_err(|_| anyhow::anyhow!("the engine is unavailable"))?;
                    eval_folder(
                        &mut ws,
                        &folder,
                        EvalMode::Auto,
                        &cfg,
                        self.inner.index_batch,
                        &set,
                    )?
                };
                let view = self.eval_view(&folder, &report)?;
                let text = serde_json::to_vec(&view)?;
                let path = self.inner.home.join("eval.json");
                let mut tmp = tempfile::NamedTempFile::new_in(&self.inner.home)?;
                std::io::Write::write_all(&mut tmp, &text)?;
                tmp.persist(&path)?;
                Ok(format!(
                    "MAP@10 {:.4}, vote accuracy {:.4} over {} images ({})",
                    report.map_at_10, report.vote_accuracy, report.images, report.mode
                ))
            }
        }
    }

    /// The dashboard's view of an evaluation report of `folder`.
    fn eval_view(&self, folder: &Path, report: &Report) -> anyhow::Result<EvalView> {
        let prefix = format!("{}{}", folder.to_string_lossy(), std::path::MAIN_SEPARATOR);
        let rows = self
            .inner
            .ws
            .lock()
            .map_err(|_| anyhow::anyhow!("the engine is unavailable"))?
            .vectors_under(&prefix)?;
        let by_path: HashMap<String, (String, Vec<f32>)> = rows
            .into_iter()
            .map(|(r, v)| {
                let rel = Path::new(&r.path)
                    .strip_prefix(folder)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(r.path);
                (rel, (r.hash, v))
            })
            .collect();
        let hash_of = |p: &str| by_path.get(p).map(|h| h.0.clone()).unwrap_or_default();
        // The map: every evaluated query, at most MAP_POINTS of them, evenly spread.
        let step = report.results.len().div_ceil(MAP_POINTS).max(1);
        let sample: Vec<_> = report
            .results
            .iter()
            .step_by(step)
            .filter_map(|q| by_path.get(&q.path).map(|(_, v)| (q, v)))
            .collect();
        let vectors: Vec<&[f32]> = sample.iter().map(|(_, v)| v.as_slice()).collect();
        let xy = crate::eval::pca2(&vectors);
        Ok(EvalView {
            folder: folder.to_string_lossy().into_owned(),
            mode: report.mode.clone(),
            model: self.model().to_string(),
            images: report.images as u64,
            map_at_10: report.map_at_10,
            vote_accuracy: report.vote_accuracy,
            per_category: report
                .per_category
                .iter()
                .map(|c| CategoryScore {
                    category: c.category.clone(),
                    images: c.images as u64,
                    map_at_10: c.map_at_k,
                    precision: c.precision,
                    recall: c.recall,
                })
                .collect(),
            confusion_labels: report.confusion.labels.clone(),
            confusion: report
                .confusion
                .matrix
                .iter()
                .map(|r| r.iter().map(|&n| n as u64).collect())
                .collect(),
            worst: report
                .worst
                .iter()
                .map(|q| WorstQuery {
                    hash: hash_of(&q.path),
                    path: q.path.clone(),
                    category: q.category.clone(),
                    predicted: q.predicted.clone(),
                    ap: q.ap,
                })
                .collect(),
            map: sample
                .iter()
                .zip(xy)
                .map(|((q, _), (x, y))| MapPoint {
                    x,
                    y,
                    category: q.category.clone(),
                    path: q.path.clone(),
                    correct: q.predicted.as_deref() == Some(q.category.as_str()),
                })
                .collect(),
            created_at: now(),
        })
    }

    /// The folder a user asked for, if it is allowed: an existing directory inside a data root
    /// (or, without roots, one of the served folders or inside one).
    fn allowed_folder(&self, folder: &str) -> Result<PathBuf, ApiError> {
        if folder.trim().is_empty() {
            return Err(ApiError::invalid("folder", "give a folder on the server"));
        }
        if folder.len() > MAX_PATH_BYTES {
            return Err(ApiError::invalid(
                "folder",
                format!("longer than {MAX_PATH_BYTES} bytes"),
            ));
        }
        if folder.chars().any(char::is_control) {
            return Err(ApiError::invalid("folder", "contains control characters"));
        }
        if !Path::new(folder).is_absolute() {
            return Err(ApiError::invalid(
                "folder",
                "give an absolute path (the server's working folder is not yours)",
            ));
        }
        let roots = if self.inner.data_roots.is_empty() {
            self.inner
                .folders
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default()
        } else {
            self.inner.data_roots.clone()
        };
        let outside = || {
            ApiError::new(
                403,
                format!(
                    "{folder} is outside the allowed data folders (set DATA_ROOTS on the server)"
                ),
            )
        };
        let Ok(path) = Path::new(folder).canonicalize() else {
            // Say "does not exist" only inside the roots: outside, that would tell what exists.
            return Err(if roots.iter().any(|r| Path::new(folder).starts_with(r)) {
                ApiError::invalid("folder", format!("{folder} does not exist on the server"))
            } else {
                outside()
            });
        };
        // Both sides are canonical, so `..` and symlinks cannot lead outside.
        if !roots.iter().any(|r| path.starts_with(r)) {
            return Err(outside());
        }
        if !path.is_dir() {
            return Err(ApiError::invalid(
                "folder",
                format!("{folder} is not a folder"),
            ));
        }
        Ok(path)
    }
}

impl app::backend::Backend for EngineBackend {
    fn defaults(&self) -> UiDefaults {
        self.inner.defaults.clone()
    }

    fn summary(&self) -> Result<IndexSummary, ApiError> {
        let counts = lock(&self.inner.ws)?
            .store()
            .counts(&self.inner.visual_model)
            .map_err(internal)?;
        Ok(IndexSummary {
            images: counts.iter().map(|c| c.2).sum(),
            model: self.model().to_string(),
            categories: counts
                .into_iter()
                .map(|(split, category, images)| CategoryCount {
                    split,
                    category,
                    images,
                })
                .collect(),
            folders: lock(&self.inner.folders)?
                .iter()
                .map(|f| f.to_string_lossy().into_owned())
                .collect(),
        })
    }

    fn analyse(&self, name: &str, bytes: &[u8]) -> FileOutcome {
        match self.analyse_inner(name, bytes) {
            Ok(o) => o,
            Err(e) => FileOutcome {
                name: name.to_string(),
                analysis: None,
                error: Some(ApiError {
                    field: Some(name.to_string()),
                    ..e
                }),
                cached: false,
            },
        }
    }

    fn refuse(&self, name: &str, error: ApiError) -> FileOutcome {
        self.refused(name, error)
    }

    fn admit(
        &self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<app::backend::QueueSlot, ApiError>> + Send + '_,
        >,
    > {
        Box::pin(self.inner.queue.admit())
    }

    fn analysis(&self, hash: &str) -> Result<Analysis, ApiError> {
        self.analysis_inner(hash)
    }

    fn stats(&self, cfg: &VoteConfig) -> Result<Stats, ApiError> {
        self.check_categories(cfg)?;
        let records = lock(&self.inner.history)?
            .all(self.model())
            .map_err(internal)?;
        let mut categories: HashMap<String, u64> = HashMap::new();
        let mut histogram = vec![0u64; 10];
        let mut sums = StageTimings::default();
        let mut per_minute: std::collections::BTreeMap<i64, u64> = Default::default();
        let n = records.len();
        for r in records {
            *per_minute.entry(r.created_at / 60).or_default() += 1;
            sums.decode_ms += r.timings.decode_ms;
            sums.embed_ms += r.timings.embed_ms;
            sums.text_ms += r.timings.text_ms;
            let t = Instant::now();
            let analysis = self.to_analysis(r, None)?;
            sums.search_ms += ms(t);
            let vote = analysis.rank(cfg).vote;
            *categories
                .entry(vote.category.unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
            histogram[((vote.confidence * 10.0) as usize).min(9)] += 1;
        }
        let mean = |v: f32| if n > 0 { v / n as f32 } else { 0.0 };
        let mut categories: Vec<Count> = categories
            .into_iter()
            .map(|(label, count)| Count { label, count })
            .collect();
        categories.sort_by(|a, b| b.count.cmp(&a.count).then(a.label.cmp(&b.label)));
        let eval = std::fs::read(self.inner.home.join("eval.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<EvalView>(&b).ok())
            .filter(|e| e.model == self.model());
        Ok(Stats {
            analyses: n as u64,
            categories,
            confidence_histogram: histogram,
            mean_timings: StageTimings {
                decode_ms: mean(sums.decode_ms),
                embed_ms: mean(sums.embed_ms),
                search_ms: mean(sums.search_ms),
                text_ms: mean(sums.text_ms),
            },
            throughput: per_minute
                .into_iter()
                .map(|(minute, count)| Count {
                    label: format!("{:02}:{:02}", (minute / 60) % 24, minute % 60),
                    count,
                })
                .collect(),
            errors: lock(&self.inner.history)?
                .refusals()
                .map_err(internal)?
                .into_iter()
                .map(|(label, count)| Count { label, count })
                .collect(),
            eval,
        })
    }

    fn start_job(&self, request: JobRequest) -> Result<JobStatus, ApiError> {
        let (title, request) = match request {
            JobRequest::AddFolder { folder } => {
                let path = self.allowed_folder(&folder)?;
                {
                    let mut folders = lock(&self.inner.folders)?;
                    if !folders.contains(&path) {
                        folders.push(path.clone());
                    }
                }
                (
                    format!("Index {}", path.display()),
                    JobRequest::AddFolder {
                        folder: path.to_string_lossy().into_owned(),
                    },
                )
            }
            JobRequest::Reindex => ("Re-index all folders".to_string(), JobRequest::Reindex),
            JobRequest::Evaluate => ("Evaluate".to_string(), JobRequest::Evaluate),
        };
        let job = {
            let mut jobs = lock(&self.inner.jobs)?;
            if jobs.iter().any(|j| j.state == JobState::Running) {
                return Err(ApiError::new(
                    409,
                    "a job is running: wait for it to finish",
                ));
            }
            let job = JobStatus {
                id: jobs.len() as u64 + 1,
                title,
                state: JobState::Running,
                done: 0,
                total: 0,
                message: String::new(),
            };
            jobs.push(job.clone());
            job
        };
        let me = self.clone();
        let id = job.id;
        std::thread::spawn(move || {
            let outcome = me.run_job(id, request);
            if let Ok(mut jobs) = me.inner.jobs.lock() {
                if let Some(j) = jobs.iter_mut().find(|j| j.id == id) {
                    match outcome {
                        Ok(message) => {
                            j.state = JobState::Done;
                            j.done = j.total;
                            j.message = message;
                        }
                        Err(e) => {
                            tracing::error!("job {id} failed: {e:#}");
                            j.state = JobState::Failed;
                            j.message = format!("{e:#}");
                        }
                    }
                }
            }
        });
        Ok(job)
    }

    fn job(&self, id: u64) -> Result<JobStatus, ApiError> {
        lock(&self.inner.jobs)?
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }

    fn jobs(&self) -> Vec<JobStatus> {
        let mut jobs = self
            .inner
            .jobs
            .lock()
            .map(|j| j.clone())
            .unwrap_or_default();
        jobs.reverse();
        jobs
    }
}
