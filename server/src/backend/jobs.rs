//! The background jobs the dataset page starts: index a folder, re-index all, evaluate. One
//! runs at a time, on its own thread; the index stays searchable and uploads are served while
//! it adds to the index (see `kadr_engine::workspace`). Each job and its progress is recorded
//! in the history: after a kill the job shows as interrupted, and running it again resumes
//! (indexing skips what the store already has).

use super::{lock, EngineBackend};
use app::errors::ApiError;
use app::types::*;
use kadr_engine::jobs::{eval_folder, EvalMode};
use std::path::PathBuf;

impl EngineBackend {
    pub(super) fn start(&self, request: JobRequest) -> Result<JobStatus, ApiError> {
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
            // Recorded before it starts, so a kill leaves it marked interrupted, not lost.
            lock(&self.inner.history)?
                .put_job(&job, &request)
                .map_err(super::internal)?;
            jobs.push(job.clone());
            job
        };
        let me = self.clone();
        let id = job.id;
        std::thread::spawn(move || {
            let outcome = me.run_job(id, request.clone());
            me.update_job(id, &request, |j| match outcome {
                Ok(message) => {
                    j.state = JobState::Done;
                    j.done = j.total;
                    j.message = message;
                }
                Err(e) => {
                    tracing::error!("job {id} failed: {e:#}");
                    j.state = JobState::Failed;
                    j.message = if super::disk_full(&e) {
                        format!(
                            "the server's disk is full: the batches stored before it are kept; \
                             free space and run the job again ({e:#})"
                        )
                    } else {
                        format!("{e:#}")
                    };
                }
            });
        });
        Ok(job)
    }

    /// Changes job `id` in the list and in the history.
    fn update_job(&self, id: u64, request: &JobRequest, change: impl FnOnce(&mut JobStatus)) {
        let Ok(mut jobs) = self.inner.jobs.lock() else {
            return;
        };
        let Some(j) = jobs.iter_mut().find(|j| j.id == id) else {
            return;
        };
        change(j);
        let stored = self
            .inner
            .history
            .lock()
            .map_err(|_| anyhow::anyhow!("history unavailable"))
            .and_then(|h| h.put_job(j, request));
        if let Err(e) = stored {
            tracing::error!("cannot record job {id}: {e:#}");
        }
    }

    fn run_job(&self, id: u64, request: JobRequest) -> anyhow::Result<String> {
        let set = |done: usize, total: usize| {
            self.update_job(id, &request, |j| {
                j.done = done as u64;
                j.total = total as u64;
            });
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
        match &request {
            JobRequest::AddFolder { .. } | JobRequest::Reindex => {
                // One indexing run over everything: the workspace is shared, so nothing
                // waits for it, and the index is written at its checkpoints only. Files gone
                // from the folders leave the index.
                let (files, r) = kadr_engine::jobs::index_folders(
                    &self.inner.ws,
                    &folders,
                    self.inner.index_batch,
                    &set,
                )?;
                metrics::counter!("kadr_images_embedded_total", "source" => "index")
                    .increment(r.embedded as u64);
                // The default tuning's database augmentation, for the set as it is now.
                self.warm_augmentation();
                Ok(format!(
                    "{} images in {} folder(s): {} newly indexed, {} removed (files gone), {} unreadable",
                    files.len(),
                    folders.len(),
                    r.embedded + r.reused,
                    r.removed,
                    r.failed.len()
                ))
            }
            JobRequest::Evaluate => {
                let folder = folders
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no dataset folder to evaluate: add one first"))?
                    .clone();
                let (report, _) = eval_folder(
                    &self.inner.ws,
                    &folder,
                    EvalMode::Auto,
                    &kadr_engine::jobs::EvalOptions::default(),
                    self.inner.index_batch,
                    &set,
                )?;
                let view = self.eval_view(&folder, &report)?;
                super::dashboard::save_eval(&self.inner.home, &view)?;
                Ok(format!(
                    "MAP@10 {:.4}, vote accuracy {:.4} over {} images ({})",
                    report.map_at_10, report.vote_accuracy, report.images, report.mode
                ))
            }
        }
    }
}
