//! Limits that keep the server up under abuse and load: a body size limit (413 from the
//! declared length, and a hard cut while streaming), a time limit on requests (503), and a
//! per-client rate limit (429). Every refusal is the API's JSON error.

use app::errors::ApiError;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// An [`ApiError`] response.
pub fn failure(status: u16, message: impl Into<String>) -> Response {
    let e = ApiError::new(status, message);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(e)).into_response()
}

/// Middleware: refuses bodies declared larger than `limit` bytes, and cuts off bodies that
/// grow past it while streaming (the reader then fails; uploads answer 413).
pub async fn body_limit(State(limit): State<u64>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        return failure(
            413,
            format!(
                "the request body is {:.1} MB; the limit is {:.1} MB (MAX_REQUEST_BYTES): send fewer files per request",
                n as f64 / 1e6,
                limit as f64 / 1e6
            ),
        );
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(http_body_util::Limited::new(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
    ));
    next.run(Request::from_parts(parts, body)).await
}

/// Middleware: uploads must be `multipart/form-data` with a boundary (415 otherwise; the
/// server-function codec would panic on anything else).
pub async fn multipart_only(req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST && req.uri().path() == "/api/v1/analyse" {
        let ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.essence_str() == "multipart/form-data"
                    && m.get_param(mime::BOUNDARY)
                        .is_some_and(|b| !b.as_str().is_empty())
            });
        if !ok {
            return failure(
                415,
                "send the images as multipart/form-data (a form with file fields)",
            );
        }
    }
    next.run(req).await
}

/// A panic in a handler as a JSON 500 (the connection would otherwise just close).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    failure(
        500,
        "the server failed on this request (a bug): it has been logged",
    )
}

/// Middleware: answers 503 when a request takes longer than the limit. Uploads to analyse are
/// exempt: the embedding queue bounds their wait, and their work cannot be cut short.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/api/v1/analyse" {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => failure(
            503,
            format!("the request took longer than {} s", limit.as_secs()),
        ),
    }
}

/// The per-client-IP rate limit: `per_second` requests on average, `burst` at once.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        let me = Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        });
        (per_second > 0).then_some(me)
    }

    /// Forgets clients that have been quiet for a minute, so the table stays small.
    pub fn forget_quiet_clients(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(me) = me.upgrade() else { return };
                    me.limiter.retain_recent();
                }
            });
        }
    }
}

/// Requests the rate limit does not count: static files, content-addressed images (a results
/// page shows hundreds of thumbnails) and the health check.
fn unmetered(path: &str) -> bool {
    ["/pkg/", "/vendor/", "/docs/", "/img/"]
        .iter()
        .any(|p| path.starts_with(p))
        || matches!(path, "/status" | "/favicon.ico")
}

/// Middleware: 429 with `Retry-After` for a client over its rate. The client is the peer
/// address (`into_make_service_with_connect_info`); behind a reverse proxy that is the proxy.
pub async fn rate_limit(State(rl): State<Arc<RateLimit>>, req: Request, next: Next) -> Response {
    if !unmetered(req.uri().path()) {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
            if let Err(not_until) = rl.limiter.check_key(&peer.ip()) {
                let wait = not_until
                    .wait_time_from(rl.clock.now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0);
                let mut res = failure(
                    429,
                    format!("too many requests: wait {wait} s (RATE_LIMIT per client)"),
                );
                if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                    res.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return res;
            }
        }
    }
    next.run(req).await
}
