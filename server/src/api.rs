//! REST endpoints that are not server functions: images and thumbnails by content hash, the
//! CSV export and the submission of a batch, `/status`, and the OpenAPI document with its UI.
//! (The server functions of the `app` crate are the rest of the API, under `/api/v1/`.)
//! Every error is JSON `{"status", "message", "field"}` with a 4xx status for the caller's
//! mistakes.

use crate::backend::EngineBackend;
use app::errors::ApiError;
use app::types::{Analysis, Tuning};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kadr_engine::index::Filter;
use kadr_engine::submit::{write_csv, Prediction, NEIGHBOURS};
use std::collections::HashMap;

/// Most hashes one export may name.
pub const MAX_EXPORT: usize = 1000;
/// Longer side of thumbnails, in pixels.
pub const THUMB_SIDE: u32 = 256;

/// An [`ApiError`] as an HTTP response.
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(self.0)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
        }
        res
    }
}

/// The routes of this module, over `backend`.
pub fn routes<S: Clone + Send + Sync + 'static>(backend: EngineBackend) -> Router<S> {
    Router::new()
        .route("/img/{hash}", get(image))
        .route("/api/v1/export.csv", get(export_csv))
        .route("/api/v1/submission.csv", get(submission_csv))
        .route("/status", get(status))
        .route("/api/openapi.json", get(openapi))
        .with_state(backend)
}

fn check_hash(hash: &str) -> Result<String, ApiError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid(
            "hash",
            format!("{hash:?} is not a content hash (64 hexadecimal characters)"),
        ))
    }
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the engine failed: {e}")))?
        .map_err(Failure)
}

/// `GET /img/{hash}[?size=thumb]`: the image with that content, or a JPEG thumbnail of it.
async fn image(
    State(backend): State<EngineBackend>,
    Path(hash): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let hash = check_hash(&hash)?;
    let thumb = match q.get("size").map(String::as_str) {
        None | Some("full") => false,
        Some("thumb") => true,
        Some(other) => {
            return Err(ApiError::invalid("size", format!("{other:?}: use thumb or full")).into())
        }
    };
    // A thumbnail not made yet means decoding the image: that waits its turn like uploads.
    let cached = backend.thumbs_dir().join(format!("{hash}.jpg"));
    let slot = if thumb && !cached.is_file() {
        Some(backend.admit().await?)
    } else {
        None
    };
    let (bytes, mime) = blocking(move || {
        let _slot = slot;
        let file = backend.image_file(&hash)?;
        if thumb {
            if let Ok(b) = std::fs::read(&cached) {
                return Ok((b, "image/jpeg"));
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| ApiError::not_found(format!("image file unreadable: {e}")))?;
            // Under MAX_PIXELS like uploads: an indexed file may be larger than this server
            // agrees to decode (indexed under another limit, or replaced on disk).
            // A large JPEG is decoded reduced, its shorter side still at least the
            // thumbnail's longer one.
            let img = kadr_engine::decode::decode_reduced(&bytes, backend.max_pixels(), THUMB_SIDE)
                .map_err(|e| ApiError::new(e.status(), e.to_string()))?
                .image;
            let scale = (THUMB_SIDE as f64 / img.width().max(img.height()).max(1) as f64).min(1.0);
            let side = |v: u32| ((v as f64 * scale).round() as u32).max(1);
            let small = image::imageops::thumbnail(&img, side(img.width()), side(img.height()));
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
                .encode_image(&small)
                .map_err(|e| ApiError::internal(format!("thumbnail: {e}")))?;
            // Best effort: a failed cache write only costs the next request a resize. Written
            // then renamed, so a kill mid-write never leaves half a thumbnail to be served.
            let dir = backend.thumbs_dir();
            let _ = std::fs::create_dir_all(&dir)
                .and_then(|_| tempfile::NamedTempFile::new_in(&dir))
                .and_then(|mut tmp| {
                    std::io::Write::write_all(&mut tmp, &out)?;
                    tmp.persist(&cached).map_err(|e| e.error)
                });
            Ok((out, "image/jpeg"))
        } else {
            let bytes = std::fs::read(&file)
                .map_err(|e| ApiError::not_found(format!("image file unreadable: {e}")))?;
            let mime = image::guess_format(&bytes)
                .map(|f| f.to_mime_type())
                .unwrap_or("application/octet-stream");
            Ok((bytes, mime))
        }
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            // Content-addressed: the bytes behind a hash never change.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response())
}

/// Reads `hashes` and the tuning parameters of an export request.
fn export_request(
    backend: &EngineBackend,
    q: &HashMap<String, String>,
) -> Result<(Vec<String>, Tuning, app::vote::VoteConfig), ApiError> {
    let raw = q
        .get("hashes")
        .ok_or_else(|| ApiError::invalid("hashes", "give the analyses to export: hashes=h1,h2"))?;
    let hashes: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(check_hash)
        .collect::<Result<_, _>>()?;
    if hashes.is_empty() {
        return Err(ApiError::invalid("hashes", "no hashes given"));
    }
    if hashes.len() > MAX_EXPORT {
        return Err(ApiError::invalid(
            "hashes",
            format!("more than {MAX_EXPORT} analyses in one export"),
        ));
    }
    for (key, value) in q {
        if !matches!(
            key.as_str(),
            "hashes" | "t" | "rel" | "conf" | "k" | "mode" | "rename" | "ignore"
        ) {
            return Err(ApiError::invalid(key.clone(), "unknown parameter"));
        }
        // Values that do not parse must not silently fall back to defaults here.
        let numeric = match key.as_str() {
            "t" | "conf" => value.trim().parse::<f32>().is_err(),
            "k" => value.trim().parse::<usize>().is_err(),
            "rel" => !matches!(value.as_str(), "0" | "1" | "true" | "false"),
            "mode" => value.parse::<app::vote::VoteMode>().is_err(),
            _ => false,
        };
        if numeric {
            return Err(ApiError::invalid(
                key.clone(),
                format!("bad value {value:?}"),
            ));
        }
    }
    let defaults = app::backend::Backend::defaults(backend).tuning;
    let tuning = Tuning::from_query(|k| q.get(k).cloned(), &defaults);
    let cfg = tuning.validate()?;
    backend.check_categories(&cfg)?;
    Ok((hashes, tuning, cfg))
}

fn csv_response(name: &str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/export.csv?hashes=..&t=..`: every field the results view shows, one row per
/// analysis, under the given tuning.
async fn export_csv(
    State(backend): State<EngineBackend>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let body = blocking(move || {
        let (hashes, tuning, cfg) = export_request(&backend, &q)?;
        let analyses = backend.analyses(&hashes, &Filter::all())?;
        export_rows(&analyses, &tuning, &cfg).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(csv_response("kadr-results.csv", body))
}

/// The results CSV: file, hash, permalink, size, vote, then each match (path, category,
/// score) up to k, then the text analysis.
pub fn export_rows(
    analyses: &[Analysis],
    tuning: &Tuning,
    cfg: &app::vote::VoteConfig,
) -> anyhow::Result<Vec<u8>> {
    let mut w = kadr_engine::csv_safe::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "file",
        "hash",
        "permalink",
        "width",
        "height",
        "category",
        "confidence",
        "voters",
        "matches",
    ]
    .map(String::from)
    .to_vec();
    for i in 1..=cfg.k {
        header.extend([
            format!("match_{i}"),
            format!("match_{i}_category"),
            format!("match_{i}_score"),
        ]);
    }
    header.extend(["text_source", "caption", "labels"].map(String::from));
    w.write_record(&header)?;
    for a in analyses {
        let r = a.rank(cfg);
        let mut row = vec![
            a.name.clone(),
            a.hash.clone(),
            format!("/a/{}?{}", a.hash, tuning.to_query()),
            a.width.to_string(),
            a.height.to_string(),
            r.vote.category.clone().unwrap_or_default(),
            format!("{:.4}", r.vote.confidence),
            r.vote.voters.to_string(),
            r.matches.len().to_string(),
        ];
        for i in 0..cfg.k {
            match r.matches.get(i) {
                Some(h) => row.extend([
                    h.path.clone(),
                    h.category.clone(),
                    format!("{:.4}", h.score),
                ]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
        }
        row.push(
            serde_json::to_value(a.text.source)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        row.push(a.text.caption.clone().unwrap_or_default());
        row.push(
            a.text
                .labels
                .iter()
                .map(|l| format!("{} ({:.3})", l.label, l.score))
                .collect::<Vec<_>>()
                .join("; "),
        );
        w.write_record(&row)?;
    }
    Ok(w.into_inner()?)
}

/// `GET /api/v1/submission.csv?hashes=..`: the engine's submission format (see
/// [`crate::submit`]) for a batch of analyses: voted category under the tuning, and the ten
/// nearest indexed `train/` and `valid/` images.
async fn submission_csv(
    State(backend): State<EngineBackend>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let body = blocking(move || {
        let (hashes, _, cfg) = export_request(&backend, &q)?;
        // Votes and neighbours come from the labelled references only (train and valid), as
        // in `kadr submit`: never from other test images.
        let analyses = backend.analyses(&hashes, &Filter::references())?;
        let predictions: Vec<Prediction> = analyses
            .iter()
            .map(|a| {
                let vote = a.rank(&cfg).vote;
                Prediction {
                    image: a.name.clone(),
                    category: vote.category,
                    confidence: vote.confidence,
                    neighbours: a
                        .hits
                        .iter()
                        .take(NEIGHBOURS)
                        .map(|h| (h.path.clone(), h.score))
                        .collect(),
                }
            })
            .collect();
        let mut out = Vec::new();
        write_csv(&predictions, &mut out).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(out)
    })
    .await?;
    Ok(csv_response("submission.csv", body))
}

/// `GET /status`: version, model, device, index size, uptime.
async fn status(State(backend): State<EngineBackend>) -> Result<Response, Failure> {
    let s = blocking(move || backend.status()).await?;
    Ok(Json(s).into_response())
}

/// `GET /api/openapi.json`.
async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::types::{Hit, StageTimings, TextAnalysis, TextSource};

    #[test]
    fn export_has_a_column_per_shown_field_and_follows_the_tuning() {
        let hit = |c: &str, s: f32| Hit {
            hash: "h".into(),
            path: format!("{c}/x.png"),
            split: String::new(),
            category: c.into(),
            score: s,
        };
        let a = Analysis {
            hash: "ab".into(),
            name: "q, \"quoted\".png".into(),
            width: 4,
            height: 3,
            hits: vec![hit("cat", 0.9), hit("dog", 0.5), hit("dog", 0.45)],
            text: TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: vec![app::types::ScoredLabel {
                    label: "tabby".into(),
                    score: 0.5,
                }],
            },
            timings: StageTimings::default(),
            created_at: 0,
            indexed_category: None,
        };
        let tuning = Tuning {
            k: 3,
            threshold: 0.4,
            ..Tuning::default()
        };
        let cfg = tuning.validate().unwrap();
        let text = String::from_utf8(export_rows(std::slice::from_ref(&a), &tuning, &cfg).unwrap())
            .unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        assert_eq!(header.len(), 9 + 3 * 3 + 3);
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(&row[0], "q, \"quoted\".png");
        assert_eq!(&row[5], "dog");
        assert_eq!(&row[8], "3");
        assert_eq!(&row[18], "imagenet_labels");
        assert_eq!(&row[20], "tabby (0.500)");
        // A stricter threshold changes the vote and empties the match columns.
        let strict = Tuning {
            threshold: 0.8,
            ..tuning.clone()
        };
        let text =
            String::from_utf8(export_rows(&[a], &strict, &strict.validate().unwrap()).unwrap())
                .unwrap();
        let row = csv::Reader::from_reader(text.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!((&row[5], &row[8], &row[12]), ("cat", "1", ""));
    }

    #[test]
    fn export_cells_that_look_like_formulas_are_text_and_scores_numbers() {
        let a = Analysis {
            hash: "ab".into(),
            name: "=HYPERLINK(\"http://x\",\"y\").png".into(),
            width: 1,
            height: 1,
            hits: vec![Hit {
                hash: "h".into(),
                path: "-x.png".into(),
                split: String::new(),
                category: "@cat".into(),
                score: -0.5,
            }],
            text: TextAnalysis {
                source: TextSource::Vlm,
                caption: Some("+caption".into()),
                labels: vec![],
            },
            timings: StageTimings::default(),
            created_at: 0,
            indexed_category: None,
        };
        let tuning = Tuning {
            k: 1,
            threshold: -1.0,
            ..Tuning::default()
        };
        let cfg = tuning.validate().unwrap();
        let text = String::from_utf8(export_rows(&[a], &tuning, &cfg).unwrap()).unwrap();
        let row = csv::Reader::from_reader(text.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(&row[0], "'=HYPERLINK(\"http://x\",\"y\").png");
        assert_eq!(&row[5], "'@cat", "the voted category");
        assert_eq!(
            (&row[9], &row[10], &row[11]),
            ("'-x.png", "'@cat", "-0.5000")
        );
        assert_eq!(&row[13], "'+caption");
    }
}
