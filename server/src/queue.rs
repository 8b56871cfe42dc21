//! The bounded queue in front of embedding: at most `workers` upload requests embed at once,
//! at most `depth` more wait (for at most `timeout`), and the rest are told to come back later
//! (503). Requests wait before their bodies are read, so a burst of uploads costs sockets, not
//! memory; the place is held until the engine has finished with the files, even when the
//! client has gone.

use app::backend::QueueSlot;
use app::errors::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The queue; cheap to share.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    depth: usize,
    timeout: Duration,
}

/// A worker's place; frees it when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    queue: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.queue.running.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("kadr_queue_running").set(n as f64);
    }
}

/// Counts a waiting request for as long as it waits (also when its client goes away).
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let n = self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("kadr_queue_depth").set(n as f64);
    }
}

impl WorkQueue {
    /// `workers` at once, `depth` waiting, each for at most `timeout`.
    pub fn new(workers: usize, depth: usize, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                workers: Arc::new(Semaphore::new(workers.max(1))),
                waiting: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                depth,
                timeout,
            }),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Requests holding a worker now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> QueueSlot {
        let n = self.inner.running.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("kadr_queue_running").set(n as f64);
        Box::new(Slot {
            _permit: permit,
            queue: self.inner.clone(),
        })
    }

    /// A worker's place, after waiting if all are busy; 503 when the queue is full or the wait
    /// runs out.
    pub async fn admit(&self) -> Result<QueueSlot, ApiError> {
        if let Ok(p) = self.inner.workers.clone().try_acquire_owned() {
            return Ok(self.slot(p));
        }
        let before = self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.inner);
        if before >= self.inner.depth {
            drop(waiting);
            metrics::counter!("kadr_queue_rejected_total", "reason" => "full").increment(1);
            return Err(ApiError::busy(format!(
                "the server is busy ({} uploads waiting): try again in a few seconds",
                before
            )));
        }
        metrics::gauge!("kadr_queue_depth").set((before + 1) as f64);
        let permit = tokio::time::timeout(
            self.inner.timeout,
            self.inner.workers.clone().acquire_owned(),
        )
        .await;
        drop(waiting);
        match permit {
            Ok(Ok(p)) => Ok(self.slot(p)),
            Ok(Err(_)) => Err(ApiError::internal("the embedding queue is closed")),
            Err(_) => {
                metrics::counter!("kadr_queue_rejected_total", "reason" => "timeout").increment(1);
                Err(ApiError::busy(format!(
                    "the server is busy: no embedding worker was free within {} s; try again later",
                    self.inner.timeout.as_secs()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_then_refuses_beyond_depth_and_frees_on_drop() {
        let q = WorkQueue::new(1, 1, Duration::from_secs(5));
        let first = q.admit().await.unwrap();
        assert_eq!(q.running(), 1);
        // One may wait...
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.admit().await.map(|_| ()) });
        while q.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once.
        let e = q.admit().await.err().expect("queue full");
        assert_eq!(e.status, 503);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!((q.waiting(), q.running()), (0, 0));
    }

    #[tokio::test]
    async fn a_long_wait_is_a_503() {
        let q = WorkQueue::new(1, 4, Duration::from_millis(50));
        let _held = q.admit().await.unwrap();
        let e = q.admit().await.err().expect("timed out");
        assert_eq!(e.status, 503);
        assert_eq!(q.waiting(), 0);
    }
}
