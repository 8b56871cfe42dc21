//! REST endpoints that are not server functions: images and thumbnails by content hash, the
//! CSV export and the submission of a batch, `/status`, and the OpenAPI document with its UI.
//! (The server functions of the `app` crate are the rest of the API, under `/api/v1/`.)
//! Every error is JSON `{"status", "message", "field"}` with a 4xx status for the caller's
//! mistakes.

use crate::backend::EngineBackend;
use app::errors::ApiError;
use app::types::{Analysis, Decider, Tuning};
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
    if app::types::is_content_hash(hash) {
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

/// What an export asks for: the analyses (searched with the tuning's re-ranking) and
/// how their categories are decided.
struct Export {
    analyses: Vec<Analysis>,
    tuning: Tuning,
    cfg: app::vote::VoteConfig,
    /// The tuning's category source, "best" resolved.
    by: Decider,
    /// Why `by`, when it was "best".
    reason: Option<String>,
}

/// Reads `hashes` and the tuning parameters of an export request, and looks the analyses up
/// among the hits `filter` lets through.
fn export(
    backend: &EngineBackend,
    q: &HashMap<String, String>,
    filter: &Filter,
) -> Result<Export, ApiError> {
    let (hashes, tuning, cfg) = export_request(backend, q)?;
    let analyses = backend.analyses(&hashes, filter, &tuning.rerank())?;
    let (by, reason) = match tuning.by {
        Decider::Best => {
            let c = backend.category_choice(&cfg)?;
            (c.by, Some(c.reason))
        }
        by => (by, None),
    };
    Ok(Export {
        analyses,
        tuning,
        cfg,
        by,
        reason,
    })
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
        if key != "hashes" && !Tuning::KEYS.contains(&key.as_str()) {
            return Err(ApiError::invalid(key.clone(), "unknown parameter"));
        }
        // Values that do not parse must not silently fall back to defaults here.
        Tuning::check_raw(key, value)?;
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
        let e = export(&backend, &q, &Filter::all())?;
        export_rows(&e.analyses, &e.tuning, &e.cfg, e.by)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(csv_response("kadr-results.csv", body))
}

/// The results CSV: file, hash, permalink, size, the category (by `by`: the vote or the
/// head) and its confidence, the voters, then each match (path, category, score) up to k,
/// then the text analysis, then where the category came from and the head's guess.
pub fn export_rows(
    analyses: &[Analysis],
    tuning: &Tuning,
    cfg: &app::vote::VoteConfig,
    by: Decider,
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
    header.extend(
        [
            "text_source",
            "caption",
            "labels",
            "category_by",
            "head_category",
            "head_probability",
        ]
        .map(String::from),
    );
    w.write_record(&header)?;
    for a in analyses {
        let r = a.rank(cfg);
        let decision = a.decide(&r, cfg, by);
        let mut row = vec![
            a.name.clone(),
            a.hash.clone(),
            format!("/a/{}?{}", a.hash, tuning.to_query()),
            a.width.to_string(),
            a.height.to_string(),
            decision.category.clone().unwrap_or_default(),
            format!("{:.4}", decision.confidence),
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
        row.push(decision.by.as_str().to_string());
        match &a.head {
            Some(h) => row.extend([h.category.clone(), format!("{:.4}", h.probability)]),
            None => row.extend([String::new(), String::new()]),
        }
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
    let (body, by, reason) = blocking(move || {
        // Votes and neighbours come from the labelled references only (train and valid), as
        // in `kadr submit`: never from other test images.
        let e = export(&backend, &q, &Filter::references())?;
        let predictions: Vec<Prediction> = e
            .analyses
            .iter()
            .map(|a| {
                let decision = a.decide(&a.rank(&e.cfg), &e.cfg, e.by);
                Prediction {
                    image: a.name.clone(),
                    category: decision.category,
                    confidence: decision.confidence,
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
        Ok((out, e.by, e.reason))
    })
    .await?;
    // Which predictor gave the categories (and, for "best", why): the CSV's columns are the
    // competition's, so this goes in headers.
    let mut res = csv_response("submission.csv", body);
    let headers = res.headers_mut();
    headers.insert(
        "x-kadr-category-by",
        axum::http::HeaderValue::from_static(by.as_str()),
    );
    if let Some(r) = reason.and_then(|r| axum::http::HeaderValue::from_str(&r).ok()) {
        headers.insert("x-kadr-category-reason", r);
    }
    Ok(res)
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
            head: None,
            expansion: Default::default(),
            augmentation: Default::default(),
        };
        let tuning = Tuning {
            k: 3,
            threshold: 0.4,
            ..Tuning::default()
        };
        let cfg = tuning.validate().unwrap();
        let text = String::from_utf8(
            export_rows(std::slice::from_ref(&a), &tuning, &cfg, Decider::Vote).unwrap(),
        )
        .unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        assert_eq!(header.len(), 9 + 3 * 3 + 3 + 3);
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
        let first_row = |a: &Analysis, by| {
            let text = export_rows(
                std::slice::from_ref(a),
                &strict,
                &strict.validate().unwrap(),
                by,
            )
            .unwrap();
            csv::Reader::from_reader(text.as_slice())
                .records()
                .next()
                .unwrap()
                .unwrap()
        };
        let row = first_row(&a, Decider::Vote);
        assert_eq!((&row[5], &row[8], &row[12]), ("cat", "1", ""));
        assert_eq!((&row[21], &row[22], &row[23]), ("vote", "", ""));
        // With a head asked for, the category and confidence are the head's.
        let with_head = Analysis {
            head: Some(app::types::HeadGuess {
                category: "fox".into(),
                probability: 0.625,
                top: vec![],
            }),
            ..a
        };
        let row = first_row(&with_head, Decider::Head);
        assert_eq!((&row[5], &row[6]), ("fox", "0.6250"));
        assert_eq!((&row[21], &row[22], &row[23]), ("head", "fox", "0.6250"));
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
            head: None,
            expansion: Default::default(),
            augmentation: Default::default(),
        };
        let tuning = Tuning {
            k: 1,
            threshold: -1.0,
            ..Tuning::default()
        };
        let cfg = tuning.validate().unwrap();
        let text =
            String::from_utf8(export_rows(&[a], &tuning, &cfg, Decider::Vote).unwrap()).unwrap();
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
