//! The accept loop: HTTP/1.1 connections with a deadline for each request's headers, an idle
//! limit, and a cap on how many are open at once. `axum::serve` holds a connection for as long
//! as the client keeps it, so clients that send half a request line and then nothing would
//! pile up until the process ran out of file descriptors and stopped accepting anyone.
//!
//! - `HEADER_TIMEOUT`: a request's headers must arrive within this time of the connection's
//!   start (or of the previous response); hyper closes the connection otherwise, however
//!   slowly the bytes trickle in.
//! - `IDLE_TIMEOUT`: a connection on which no byte moves for this long while it waits on the
//!   client (no request in progress, or a request whose body stopped arriving) is closed; a
//!   request the server is working on is never cut short by it.
//! - `MAX_CONNECTIONS`: beyond it, a new connection is answered `503` with `Retry-After` and
//!   closed at once, so the descriptors in use stay bounded and the clients already connected
//!   keep being served.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The connection limits (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn from_settings(s: &kadr_engine::settings::Settings) -> Self {
        Self {
            header_timeout: Duration::from_secs(s.header_timeout_s),
            idle_timeout: Duration::from_secs(s.idle_timeout_s),
            max_connections: s.max_connections,
        }
    }
}

/// The body of the answer to a connection past `MAX_CONNECTIONS`.
const BUSY: &str = r#"{"status":503,"message":"the server has MAX_CONNECTIONS connections open: try again in a second"}"#;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets each open
/// connection finish its request (idle ones close at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    raise_fd_limit(limits.max_connections);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: keep
                    // the loop alive and let open connections drain.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("kadr_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        metrics::gauge!("kadr_connections_open").increment(1.0);
        let app = app.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, limits, stop).await;
            metrics::gauge!("kadr_connections_open").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// Answers 503 and closes, without reading the request; gives up on a client that does not
/// even take the answer within a second.
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = TowerToHyperService::new(app);
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` provides: the rate limit keys on it.
        req.extensions_mut().insert(ConnectInfo(peer));
        let working = Working::new(busy.clone());
        let activity = busy.clone();
        let req = req.map(move |body| WatchedBody {
            inner: body,
            activity,
        });
        let fut = hyper::service::Service::call(&svc, req);
        async move {
            let res = fut.await;
            drop(working);
            res
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let idle = activity.idle(limits.idle_timeout);
    tokio::pin!(idle);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection closed: {e}");
                }
                return;
            }
            () = &mut idle => {
                metrics::counter!("kadr_connections_idle_closed_total").increment(1);
                tracing::debug!(%peer, "idle connection closed");
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When bytes last moved on a connection, how many of its requests are being worked on, and
/// whether the one in progress is waiting for more of its body from the client.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    working: AtomicUsize,
    awaiting_body: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            working: AtomicUsize::new(0),
            awaiting_body: AtomicBool::new(false),
        }
    }

    /// Whether the connection waits on the client: no request in progress, or one whose
    /// handler waits for body bytes that do not come (a slow-body client).
    fn waiting_on_client(&self) -> bool {
        self.working.load(Ordering::Relaxed) == 0 || self.awaiting_body.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit` while the connection waits on the client.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline && self.waiting_on_client() {
                return;
            }
            let wake = deadline.max(Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(wake.into()).await;
            if !self.waiting_on_client() {
                // A request being worked on counts as activity until it is answered.
                self.touch();
            }
        }
    }
}

/// A request being worked on (dropped when its response is ready).
struct Working(Arc<Activity>);

impl Working {
    fn new(a: Arc<Activity>) -> Self {
        a.working.fetch_add(1, Ordering::Relaxed);
        Self(a)
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A request body, noting whether its reader waits for bytes from the client.
struct WatchedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl hyper::body::Body for WatchedBody {
    type Data = <Incoming as hyper::body::Body>::Data;
    type Error = <Incoming as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let waiting = r.is_pending();
        self.activity
            .awaiting_body
            .store(waiting, Ordering::Relaxed);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.activity.awaiting_body.store(false, Ordering::Relaxed);
    }
}

/// The socket, noting each read or write that moved bytes.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files towards the hard one so `MAX_CONNECTIONS` fit (with
/// room for the store, the index, logs and uploads), and says so when they cannot.
fn raise_fd_limit(max_connections: usize) {
    let want = max_connections.saturating_add(256) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            "MAX_CONNECTIONS={max_connections} needs about {want} open files but the limit is {}: \
             lower MAX_CONNECTIONS or raise `ulimit -n`",
            lim.rlim_cur
        );
    }
}
