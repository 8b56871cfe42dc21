//! Dynamic batching: concurrent requests to embed an image are gathered into one forward pass,
//! the way inference servers such as Triton do. `workers` threads each take the first waiting
//! request, wait at most `wait` for more (up to `max_batch` images), run one pass over all of
//! them and answer each request on its own channel. While one worker runs a pass, the next
//! gathers the next batch, so a GPU (or the CPU's cores) is never idle while requests wait.
//!
//! Callers decode and preprocess themselves (in parallel, on their own threads) and block on
//! [`Batcher::embed`]; an error of the pass is every member's error. With batching off each
//! request is its own pass, `workers` of them at once.
//!
//! A caller that knows an image is on its way (an upload being decoded) says so first with
//! [`Batcher::announce`]. A worker waits for more only while announced images have not yet
//! arrived, so a lone request never waits for company that is not coming, and a burst fills
//! one pass.

use crate::embed::{Embedder, TopClasses};
use anyhow::{anyhow, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting worker looks again whether announced images are still coming.
const POLL: Duration = Duration::from_millis(1);

/// How the batcher gathers requests.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Forward passes that may run at once.
    pub workers: usize,
    /// Most images in one pass.
    pub max_batch: usize,
    /// Longest the first request of a batch waits for announced others.
    pub wait: Duration,
    /// Gather at all (off: every request is its own pass).
    pub enabled: bool,
}

impl BatchConfig {
    /// The settings' batching: `EMBED_WORKERS`, `MAX_BATCH_SIZE`, `BATCH_WAIT_MS`,
    /// `DYNAMIC_BATCHING`.
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        Self {
            workers: s.embed_workers,
            max_batch: s.max_batch_size,
            wait: Duration::from_millis(s.batch_wait_ms),
            enabled: s.dynamic_batching,
        }
    }

    /// Most images in one pass: `max_batch`, or 1 with batching off.
    pub fn pass_size(&self) -> usize {
        if self.enabled {
            self.max_batch.max(1)
        } else {
            1
        }
    }

    /// Requests that can be in a pass or gathering for one at the same time.
    pub fn in_flight(&self) -> usize {
        self.workers.max(1) * self.pass_size()
    }
}

/// What a request gets back: its vector and classes, or the pass's error.
type Answer = Result<(Vec<f32>, TopClasses), String>;

/// One image to embed and where its answer goes.
struct Job {
    /// Preprocessed CHW pixels of one image.
    data: Vec<f32>,
    top_k: usize,
    reply: Sender<Answer>,
}

/// Passes run and images embedded, for the mean batch size; images announced and not yet
/// handed over.
#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    images: AtomicU64,
    coming: AtomicUsize,
}

/// An image announced to the batcher: hand it over with [`Announced::embed`]; dropping it
/// unused (the file did not decode, the analysis was cached) withdraws the announcement.
pub struct Announced {
    batcher: Batcher,
}

impl Announced {
    /// [`Batcher::embed`] for the announced image.
    pub fn embed(self, data: Vec<f32>, top_k: usize) -> Result<(Vec<f32>, TopClasses)> {
        // The job is queued before the announcement is withdrawn (on drop, below), so a worker
        // always sees one or the other.
        let answer = self.batcher.submit(data, top_k)?;
        drop(self);
        wait_for(answer)
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.batcher.counters.coming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The batcher; cheap to share. Dropping the last handle stops its workers once the queue
/// is empty.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    counters: Arc<Counters>,
    config: BatchConfig,
}

impl Batcher {
    /// Starts `config.workers` threads running `embedder`.
    pub fn new(embedder: Arc<Embedder>, config: BatchConfig) -> Self {
        let (tx, rx) = unbounded::<Job>();
        let counters = Arc::new(Counters::default());
        for i in 0..config.workers.max(1) {
            let (rx, embedder, counters) = (rx.clone(), embedder.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("kadr-embed-{i}"))
                .spawn(move || worker(&rx, &embedder, &counters, config))
                .expect("spawning an embedding worker");
        }
        Self {
            tx,
            counters,
            config,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// The L2-normalised embedding and top-`top_k` classes of one preprocessed image, from a
    /// pass shared with whatever other requests arrived meanwhile. Blocks until it is done.
    pub fn embed(&self, data: Vec<f32>, top_k: usize) -> Result<(Vec<f32>, TopClasses)> {
        wait_for(self.submit(data, top_k)?)
    }

    /// Says an image is on its way (being decoded): passes wait for it, up to the wait.
    pub fn announce(&self) -> Announced {
        self.counters.coming.fetch_add(1, Ordering::SeqCst);
        Announced {
            batcher: self.clone(),
        }
    }

    fn submit(&self, data: Vec<f32>, top_k: usize) -> Result<Receiver<Answer>> {
        let (reply, answer) = bounded(1);
        self.tx
            .send(Job { data, top_k, reply })
            .map_err(|_| anyhow!("the embedding workers have stopped"))?;
        Ok(answer)
    }

    /// Mean images per forward pass so far (0 before the first).
    pub fn mean_batch_size(&self) -> f64 {
        let passes = self.counters.passes.load(Ordering::Relaxed);
        if passes == 0 {
            0.0
        } else {
            self.counters.images.load(Ordering::Relaxed) as f64 / passes as f64
        }
    }
}

/// A submitted request's answer, once its pass is done.
fn wait_for(answer: Receiver<Answer>) -> Result<(Vec<f32>, TopClasses)> {
    answer
        .recv()
        .map_err(|_| anyhow!("an embedding worker stopped during the pass"))?
        .map_err(|e| anyhow!(e))
}

fn worker(rx: &Receiver<Job>, embedder: &Embedder, counters: &Counters, config: BatchConfig) {
    let max = config.pass_size();
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + config.wait;
        let mut jobs = vec![first];
        while jobs.len() < max {
            // What is queued already joins at once; then wait, until the deadline, for images
            // announced and not yet here.
            match rx.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline || counters.coming.load(Ordering::SeqCst) == 0 {
                break;
            }
            // Short waits, so a withdrawn announcement (a file that did not decode) is noticed.
            match rx.recv_timeout((deadline - now).min(POLL)) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        run_pass(embedder, counters, jobs);
    }
}

fn run_pass(embedder: &Embedder, counters: &Counters, jobs: Vec<Job>) {
    let n = jobs.len();
    let top_k = jobs.iter().map(|j| j.top_k).max().unwrap_or(0);
    let mut data = Vec::with_capacity(jobs.iter().map(|j| j.data.len()).sum());
    for j in &jobs {
        data.extend_from_slice(&j.data);
    }
    counters.passes.fetch_add(1, Ordering::Relaxed);
    counters.images.fetch_add(n as u64, Ordering::Relaxed);
    metrics::histogram!("kadr_batch_size").record(n as f64);
    match embedder.embed_with_top(&data, n, top_k) {
        Ok(out) => {
            for (job, (v, mut top)) in jobs.into_iter().zip(out) {
                top.truncate(job.top_k);
                // A requester that gave up is no error of the pass.
                let _ = job.reply.send(Ok((v, top)));
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            for job in jobs {
                let _ = job.reply.send(Err(why.clone()));
            }
        }
    }
}
