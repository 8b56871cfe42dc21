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
use kadr_engine::settings::IpRange;
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
    trusted: Vec<IpRange>,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit). `X-Forwarded-For` is believed only from a
    /// peer in `trusted` (`TRUSTED_PROXIES`).
    pub fn new(per_second: u32, burst: u32, trusted: Vec<IpRange>) -> Option<Arc<Self>> {
        let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        let me = Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            trusted,
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

/// The client a request comes from: the peer address, unless the peer is a trusted proxy;
/// then the nearest address in `X-Forwarded-For` (read from the right, as each proxy appends
/// the address it was reached from) that is not itself a trusted proxy. Addresses left of
/// that one were written by the client and are not believed. A header that does not parse
/// leaves the peer (the proxy) as the client.
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Middleware: 429 with `Retry-After` for a client over its rate. The client is the peer
/// address, or behind a proxy in `TRUSTED_PROXIES` the address it forwarded for
/// ([`client_ip`]).
pub async fn rate_limit(State(rl): State<Arc<RateLimit>>, req: Request, next: Next) -> Response {
    if !unmetered(req.uri().path()) {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
            let client = client_ip(peer.ip(), req.headers(), &rl.trusted);
            if let Err(not_until) = rl.limiter.check_key(&client) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<IpRange> = ["10.0.0.0/8", "::1"].map(|r| r.parse().unwrap()).to_vec();
        let h = xff(&["203.0.113.9"]);
        // A stranger cannot choose its own bucket.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
        // Through the proxy, the address it saw.
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("::1"), &h, &trusted), ip("203.0.113.9"));
        // What the client wrote itself (left of the proxy's entry) is not believed.
        let spoofed = xff(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies is walked through; so are several header lines.
        let chain = xff(&["203.0.113.9, 10.0.0.7", "10.0.0.8"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &chain, &trusted),
            ip("203.0.113.9")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["unknown"]), &trusted),
            ip("10.0.0.2")
        );
    }
}
