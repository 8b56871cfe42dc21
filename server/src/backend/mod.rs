//! The engine as the web app sees it: [`app::backend::Backend`] implemented over a shared
//! [`Workspace`] (searched by many requests at once while an index job adds to it), the
//! [`Batcher`] that gathers concurrent uploads into one forward pass, a [`History`] of what
//! was analysed, and the dataset folders. Server functions and the REST handlers in
//! [`crate::api`] reach the engine only through this. Split by job:
//! [`uploads`] (the upload pipeline and upload storage), [`jobs`] (the background job runner),
//! [`folders`] (which folders may be served), [`dashboard`] (statistics and the evaluation
//! view).

pub mod dashboard;
mod folders;
mod jobs;
mod search;
mod uploads;

use crate::history::History;
use anyhow::Context;
use app::analyse::FileOutcome;
use app::errors::ApiError;
use app::types::*;
use kadr_engine::batcher::{BatchConfig, Batcher};
use kadr_engine::expand::Rerank;
use kadr_engine::head::Head;
use kadr_engine::index::Filter;
use kadr_engine::settings::Settings;
use kadr_engine::vote::VoteConfig;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The web app's engine; cheap to clone.
#[derive(Clone)]
pub struct EngineBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared, never locked as a whole: see [`Workspace`].
    ws: Arc<Workspace>,
    /// Gathers the uploads' images into forward passes.
    batcher: Batcher,
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
    /// Uploads decoding at once.
    decode_gate: Gate,
    /// The dashboard's last evaluation under the last tuning asked for, by key.
    live_eval: Mutex<Option<(String, EvalView)>>,
    /// The space's trained head as last read, with its file's modification time: `kadr
    /// train` may write a new one while the server runs.
    head: Mutex<Option<(std::time::SystemTime, Arc<Head>)>>,
    /// The last [`CategoryChoice`] made, by key (vote config, head, index size).
    choice: Mutex<Option<(String, CategoryChoice)>>,
}

/// At most `n` holders at once; the others wait their turn.
struct Gate {
    give: crossbeam_channel::Sender<()>,
    take: crossbeam_channel::Receiver<()>,
}

/// A turn at the gate, given back when dropped.
struct Turn<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Self {
        let (give, take) = crossbeam_channel::bounded(n.max(1));
        for _ in 0..n.max(1) {
            give.send(()).expect("the gate has room for its tokens");
        }
        Self { give, take }
    }

    fn enter(&self) -> Turn<'_> {
        // Both ends live in `self`, so the channel cannot close under us.
        let _ = self.take.recv();
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let _ = self.0.give.send(());
    }
}

/// Clears what a kill can leave in the uploads folder: temporary files of a write cut short,
/// and uploads written but never recorded (the request was not answered). Every file left is
/// an analysis in the history.
fn reconcile_uploads(dir: &std::path::Path, history: &History) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_content_hash(&name) || !history.has_hash(&name)? {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::warn!(
            "removed {removed} file(s) from {} left by an interrupted upload",
            dir.display()
        );
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, ApiError> {
    m.lock()
        .map_err(|_| ApiError::internal("the engine is unavailable after an earlier failure"))
}

/// Whether an error, anywhere in its chain, is a full disk (`ENOSPC`, or SQLite's
/// `SQLITE_FULL`).
pub(crate) fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC)
        });
        let sqlite = matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
        );
        io || sqlite
    })
}

/// A failure to keep something on disk: `507 Insufficient Storage` with a message that says
/// so when the disk is full (nothing was kept; the request can be sent again once there is
/// room), else an internal error.
fn storage(e: impl Into<anyhow::Error>) -> ApiError {
    let e = e.into();
    if disk_full(&e) {
        tracing::error!("disk full: {e:#}");
        ApiError::new(
            507,
            "the server's disk is full: nothing was kept; send it again once space is freed",
        )
    } else {
        internal(e)
    }
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

impl EngineBackend {
    /// Wraps an open workspace serving `folders` (already indexed by the caller), with its
    /// VLM (captions and zero-shot labels of uploads) when it has one.
    pub fn new(ws: Workspace, settings: &Settings, folders: Vec<PathBuf>) -> anyhow::Result<Self> {
        let history = History::open(&settings.home.join("history.sqlite"))?;
        let interrupted = history.interrupt_running()?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} job(s) were interrupted by the last stop: run them again"
            );
        }
        let stored_jobs = history.jobs()?;
        reconcile_uploads(&settings.home.join("uploads"), &history)?;
        // Analyses are kept per vector space (the visual model, or the fused space).
        let model = ws.space_id().to_string();
        let visual_model = ws.embedder().model_id().to_string();
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
        let batching = BatchConfig::from_settings(settings);
        let batcher = Batcher::new(ws.shared_embedder(), batching);
        let has_vlm = ws.vlm().is_some();
        let me = Self {
            inner: Arc::new(Inner {
                ws: Arc::new(ws),
                batcher,
                visual_model,
                history: Mutex::new(history),
                defaults: UiDefaults {
                    tuning: Tuning {
                        threshold: settings.threshold,
                        dba: settings.dba,
                        dba_alpha: settings.dba_alpha,
                        ..Tuning::default()
                    },
                    batch_size: settings.upload_batch,
                    upload_max_side: settings.upload_max_side,
                    max_upload_bytes: settings.max_upload_bytes,
                    vlm: has_vlm,
                    model,
                },
                home: settings.home.clone(),
                device: settings.device.clone(),
                index_batch: settings.max_batch_size,
                data_roots,
                folders: Mutex::new(folders),
                jobs: Mutex::new(stored_jobs.iter().map(|(j, _)| j.clone()).collect()),
                started: Instant::now(),
                // As many uploads in progress as the batcher can put into its passes.
                queue: crate::queue::WorkQueue::new(
                    batching.in_flight(),
                    settings.queue_depth,
                    std::time::Duration::from_secs(settings.queue_timeout_s),
                ),
                max_pixels: settings.max_pixels,
                // One decode per core: more would only share the cores and hold more images.
                decode_gate: Gate::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
                ),
                live_eval: Mutex::new(None),
                head: Mutex::new(None),
                choice: Mutex::new(None),
            }),
        };
        // Folders added from the dataset page before a restart are served again (where they
        // are still allowed), so re-indexing after a kill covers them.
        for (job, request) in &stored_jobs {
            if let JobRequest::AddFolder { folder } = request {
                if job.state == JobState::Failed {
                    continue;
                }
                if let Ok(path) = me.allowed_folder(folder) {
                    let mut folders = lock(&me.inner.folders)?;
                    if !folders.contains(&path) {
                        folders.push(path);
                    }
                }
            }
        }
        if !me.inner.defaults.tuning.augmentation().is_off() {
            let warm = me.clone();
            std::thread::spawn(move || warm.warm_augmentation());
        }
        Ok(me)
    }

    /// Builds the default tuning's augmented copy of the index (`SERVE_DBA`), so that searches with
    /// it do not wait; a failure is logged (searches with it would build it again).
    pub(super) fn warm_augmentation(&self) {
        let dba = self.inner.defaults.tuning.augmentation();
        if let Err(e) = self.inner.ws.augment(&dba) {
            tracing::warn!(
                "database augmentation (SERVE_DBA={}) was not built: {e:#}",
                dba.n
            );
        }
    }

    fn model(&self) -> &str {
        &self.inner.defaults.model
    }

    /// The category head trained for this space (`kadr train`), read again when its file
    /// changes; `None` when there is none, or it cannot be read (logged: the vote still
    /// works).
    pub(crate) fn head(&self) -> Option<Arc<Head>> {
        self.head_and_time().map(|(_, h)| h)
    }

    /// [`Self::head`] with its file's modification time, which keys what is derived from it.
    fn head_and_time(&self) -> Option<(std::time::SystemTime, Arc<Head>)> {
        let path = Head::path(&self.inner.home, self.model());
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let mut cache = self.inner.head.lock().ok()?;
        if let Some((t, h)) = cache.as_ref() {
            if *t == modified {
                return Some((modified, h.clone()));
            }
        }
        match Head::load(&path, self.model()) {
            Ok(h) => {
                let h = Arc::new(h);
                *cache = Some((modified, h.clone()));
                Some((modified, h))
            }
            Err(e) => {
                tracing::warn!("the category head is not used: {e:#}");
                *cache = None;
                None
            }
        }
    }

    /// Which of the head and the vote gives categories under `cfg` when the tuning says
    /// "best": the one more accurate on the served folders' `valid/` images (against
    /// `train/`), from the stored vectors; the vote when there is no head or no split.
    pub(crate) fn category_choice(&self, cfg: &VoteConfig) -> Result<CategoryChoice, ApiError> {
        let Some((modified, h)) = self.head_and_time() else {
            return Ok(CategoryChoice::vote(
                "by the vote: no category head is trained (kadr train makes one)",
            ));
        };
        let key = format!("{cfg:?}|{modified:?}|{}", self.inner.ws.len());
        if let Some((k, c)) = lock(&self.inner.choice)?.as_ref() {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let folders = lock(&self.inner.folders)?.clone();
        let c = kadr_engine::jobs::choose_stored(&self.inner.ws, &folders, cfg, Some(&h))
            .map_err(internal)?;
        let choice = match (c.head_accuracy, c.vote_accuracy) {
            (Some(ha), Some(va)) => CategoryChoice {
                by: if c.by == "head" {
                    Decider::Head
                } else {
                    Decider::Vote
                },
                head: true,
                head_accuracy: Some(ha),
                vote_accuracy: Some(va),
                reason: format!(
                    "by the {}: on valid/ the head scores {ha:.3}, the {}-NN vote {va:.3}",
                    c.by, cfg.k
                ),
            },
            _ => CategoryChoice {
                head: true,
                ..CategoryChoice::vote(
                    "by the vote: no valid/ split among the served folders to compare the head with",
                )
            },
        };
        *lock(&self.inner.choice)? = Some((key, choice.clone()));
        Ok(choice)
    }

    /// A place in the embedding queue, for other work that decodes images (thumbnails).
    pub async fn admit(&self) -> Result<app::backend::QueueSlot, ApiError> {
        self.inner.queue.admit().await
    }

    /// Vectors in the index now (never waits for embedding).
    pub fn index_len(&self) -> u64 {
        self.inner.ws.len() as u64
    }

    /// Mean images per forward pass of the upload batcher so far.
    pub fn mean_batch_size(&self) -> f64 {
        self.inner.batcher.mean_batch_size()
    }

    /// `/status`.
    pub fn status(&self) -> Result<ServerStatus, ApiError> {
        Ok(ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.model().to_string(),
            device: self.inner.device.clone(),
            index_size: self.inner.ws.len() as u64,
            uptime_s: self.inner.started.elapsed().as_secs(),
            vlm: self.inner.defaults.vlm,
        })
    }
}

impl app::backend::Backend for EngineBackend {
    fn defaults(&self) -> UiDefaults {
        self.inner.defaults.clone()
    }

    fn summary(&self) -> Result<IndexSummary, ApiError> {
        self.index_summary()
    }

    fn analyse_files(&self, files: Vec<(String, Result<Vec<u8>, ApiError>)>) -> Vec<FileOutcome> {
        self.analyse_upload(files)
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

    fn analysis(&self, hash: &str, filter: &Filter, rr: &Rerank) -> Result<Analysis, ApiError> {
        self.analysis_of(hash, filter, rr)
    }

    fn cached_analysis(
        &self,
        hash: &str,
        filter: &Filter,
        rr: &Rerank,
    ) -> Result<Option<Analysis>, ApiError> {
        self.stored_analysis(hash, filter, rr)
    }

    fn stats(&self, tuning: &Tuning, cfg: &VoteConfig) -> Result<Stats, ApiError> {
        self.dashboard_stats(tuning, cfg)
    }

    fn choice(&self, cfg: &VoteConfig) -> Result<CategoryChoice, ApiError> {
        self.category_choice(cfg)
    }

    fn dupes(&self, threshold: f32, limit: usize) -> Result<app::dupes::DupesReport, ApiError> {
        self.duplicates(threshold, limit)
    }

    fn search_text(
        &self,
        text: &str,
        hash: Option<&str>,
        k: usize,
        filter: &Filter,
    ) -> Result<TextSearch, ApiError> {
        self.text_search(text, hash, k, filter)
    }

    fn start_job(&self, request: JobRequest) -> Result<JobStatus, ApiError> {
        self.start(request)
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
