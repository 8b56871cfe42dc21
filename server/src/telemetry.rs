//! Observability: logs (tracing, to stderr and to daily-rotated JSON files) and Prometheus
//! metrics (`GET /metrics`): requests and their latency by route, errors by kind, the
//! embedding queue, images embedded and refused, model load time, index size and process
//! memory.

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log files kept (one per day).
pub const LOG_FILES_KEPT: usize = 14;

/// Logs to stderr (human-readable, `RUST_LOG`, default `warn`) and, when `log_dir` is given, to
/// `log_dir/kadr.log.YYYY-MM-DD` as JSON lines at `file_level` (`LOG_FILE_LEVEL`, a tracing
/// filter; an invalid one falls back to `info` with a warning), keeping [`LOG_FILES_KEPT`]
/// days. The returned guard flushes the file when dropped: keep it alive.
pub fn init_logging(
    log_dir: Option<&Path>,
    file_level: &str,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let (file, guard) = match log_dir.map(file_appender) {
        Some(Ok(appender)) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let filter = EnvFilter::try_new(file_level).unwrap_or_else(|e| {
                eprintln!("warning: LOG_FILE_LEVEL {file_level:?} is not a tracing filter ({e}): using info");
                EnvFilter::new("info")
            });
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter);
            (Some(layer), Some(guard))
        }
        Some(Err(e)) => {
            eprintln!("warning: no log files: {e:#}");
            (None, None)
        }
        None => (None, None),
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    guard
}

fn file_appender(dir: &Path) -> anyhow::Result<tracing_appender::rolling::RollingFileAppender> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("kadr.log")
        .max_log_files(LOG_FILES_KEPT)
        .build(dir)?)
}

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ],
            )
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The kind of error a status stands for, as counted in `kadr_http_errors_total`.
pub fn error_kind(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media",
        422 => "invalid",
        429 => "rate_limited",
        503 => "busy",
        507 => "disk_full",
        s if s >= 500 => "internal",
        s if s >= 400 => "client_other",
        _ => return None,
    })
}

/// The route a request matched, with a fixed set of values (paths with ids collapsed).
fn route_label(req: &Request) -> String {
    if let Some(m) = req.extensions().get::<MatchedPath>() {
        let p = m.as_str();
        // Nested services match with a tail parameter.
        return match p.find("/{*") {
            Some(i) => p[..i].to_string(),
            None => p.to_string(),
        };
    }
    "unmatched".to_string()
}

/// Middleware: counts each request and times it, by method, route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = route_label(&req);
    let response = next.run(req).await;
    let status = response.status();
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("kadr_http_requests_total", &labels).increment(1);
    metrics::histogram!("kadr_http_request_duration_seconds", &labels[..2])
        .record(start.elapsed().as_secs_f64());
    if let Some(kind) = error_kind(status) {
        metrics::counter!("kadr_http_errors_total", "kind" => kind).increment(1);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(status = status.as_u16(), route = %labels[1].1, "server error");
        }
    }
    response
}

/// Resident memory of this process in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`; 0 elsewhere).
pub fn peak_resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `GET /metrics`: the Prometheus text format, with the process gauges read now.
pub async fn render(index_size: u64) -> Response {
    metrics::gauge!("kadr_process_resident_memory_bytes").set(resident_bytes() as f64);
    metrics::gauge!("kadr_process_peak_resident_memory_bytes").set(peak_resident_bytes() as f64);
    metrics::gauge!("kadr_index_vectors").set(index_size as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}
