//! The analyse slice's server functions (`POST /api/v1/analyse`, `GET /api/v1/analysis`,
//! `GET /api/v1/settings`) and the outcome they answer per file.

use crate::errors::ApiError;
use crate::types::*;
use leptos::prelude::*;
use leptos::server_fn::codec::{GetUrl, MultipartData, MultipartFormData};
use serde::{Deserialize, Serialize};

/// The outcome for one uploaded file: an analysis, or why there is none.
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileOutcome {
    /// File name as sent.
    pub name: String,
    pub analysis: Option<Analysis>,
    /// Why the file was refused (not an image, too large, corrupt...): the 4xx status it
    /// would get on its own, the reason, and its name as the field.
    pub error: Option<ApiError>,
    /// Whether the analysis came from the cache (same content analysed before).
    pub cached: bool,
}

/// Most files one upload request may carry.
pub const MAX_FILES_PER_REQUEST: usize = 100;

/// Longest file name accepted, in bytes (the common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a file name is refused: names are shown and exported, never used as paths, but one
/// with a path separator or control characters is a client bug or an attack, not a photo.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        Err(format!("file name longer than {MAX_NAME_BYTES} bytes"))
    } else if name.contains(['/', '\\']) {
        Err("file name contains a path separator".into())
    } else if name.chars().any(char::is_control) {
        Err("file name contains control characters".into())
    } else if name == "." || name == ".." {
        Err("file name is a path component".into())
    } else {
        Ok(())
    }
}

/// Analyses every file of a multipart form (any field name; the file name is kept; parts that
/// are not files, without a file name, are skipped, so a form with none is a 422). Files that
/// are refused (too large, not an image, corrupt, a bad name) get an error each, with the status
/// they would get alone; the others are analysed. When no file could be analysed the answer is
/// that 4xx (422 when the reasons differ), with one error per file in `details`.
#[server(prefix = "/api/v1", endpoint = "analyse", input = MultipartFormData)]
pub async fn analyse(data: MultipartData) -> Result<Vec<FileOutcome>, ApiError> {
    use crate::backend::blocking;
    let backend = crate::backend::backend()?;
    // Wait for a place before reading the body: waiting requests hold no file in memory.
    let slot = backend
        .admit()
        .await
        .inspect_err(|e| e.set_response_status())?;
    let mut form = data
        .into_inner()
        .ok_or_else(|| ApiError::bad_request("expected multipart/form-data with image files"))?;
    let limit = backend.defaults().max_upload_bytes;
    let body_error = |e: &dyn std::fmt::Debug, what: String| {
        // The server's request-size limit cuts the body stream short.
        if format!("{e:?}").contains("length limit exceeded") {
            ApiError::new(
                413,
                "the request is larger than the server's limit: send fewer files per request",
            )
        } else {
            ApiError::bad_request(what)
        }
    };
    let mut files: Vec<(String, Result<Vec<u8>, ApiError>)> = Vec::new();
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| body_error(&e, format!("unreadable multipart body: {e}")))?
    {
        if files.len() == MAX_FILES_PER_REQUEST {
            return Err(ApiError::invalid(
                "files",
                format!(
                    "more than {MAX_FILES_PER_REQUEST} files in one request: send them in batches"
                ),
            ));
        }
        // A part without a file name is a form's text field, not a file: it is read past.
        let Some(name) = field.file_name().map(str::to_string) else {
            while field
                .chunk()
                .await
                .map_err(|e| body_error(&e, format!("unreadable multipart body: {e}")))?
                .is_some()
            {}
            continue;
        };
        let mut bytes = Vec::new();
        let mut too_large = false;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| body_error(&e, format!("{name}: upload interrupted: {e}")))?
        {
            // Keep reading (and dropping) so the next field can be parsed.
            if too_large || (bytes.len() + chunk.len()) as u64 > limit {
                too_large = true;
                bytes = Vec::new();
                continue;
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = if let Err(why) = check_file_name(&name) {
            Err(ApiError::file(422, &name, why))
        } else if too_large {
            Err(ApiError::file(
                413,
                &name,
                format!("larger than the {} MB limit", limit / 1_000_000),
            ))
        } else {
            Ok(bytes)
        };
        files.push((name, bytes));
    }
    if files.is_empty() {
        return Err(ApiError::invalid(
            "files",
            "no files in the request (send the images as file parts of the form)",
        ));
    }
    let outcomes = blocking(move |b| {
        let _slot = slot;
        Ok(b.analyse_files(files))
    })
    .await?;
    if outcomes.iter().any(|o| o.analysis.is_some()) {
        // The per-file errors set the response's status as they were made; the batch is a
        // success.
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(http::StatusCode::OK);
        }
        return Ok(outcomes);
    }
    Err(all_refused(outcomes))
}

/// The error for an upload none of whose files could be analysed.
#[cfg(feature = "ssr")]
fn all_refused(outcomes: Vec<FileOutcome>) -> ApiError {
    let details: Vec<ApiError> = outcomes
        .into_iter()
        .map(|o| {
            o.error
                .unwrap_or_else(|| ApiError::file(500, o.name, "no result"))
        })
        .collect();
    let first = details[0].status;
    let status = if details.iter().all(|d| d.status == first) {
        first
    } else {
        422
    };
    let mut e = match details.as_slice() {
        [one] => ApiError::file(
            status,
            one.field.clone().unwrap_or_default(),
            one.message.clone(),
        ),
        _ => ApiError::invalid(
            "files",
            format!("none of the {} files could be analysed", details.len()),
        ),
    };
    e.status = status;
    e.details = details;
    e.set_response_status();
    e
}

/// The analysis of the image with content `hash` (an upload or an indexed image). `split` and
/// `category` (comma-separated) keep only hits from those splits and categories, e.g.
/// `split=train,valid` for the labelled references alone. `qe` (neighbours, 0 for none) and
/// `qa` (α) expand the query before it is searched, and `dba` and `da` search the indexed
/// images augmented by their neighbours, as the tuning's re-ranking does.
#[server(prefix = "/api/v1", endpoint = "analysis", input = GetUrl)]
pub async fn get_analysis(
    hash: String,
    #[server(default)] split: Option<String>,
    #[server(default)] category: Option<String>,
    #[server(default)] qe: Option<usize>,
    #[server(default)] qa: Option<f32>,
    #[server(default)] dba: Option<usize>,
    #[server(default)] da: Option<f32>,
) -> Result<Analysis, ApiError> {
    if !crate::types::is_content_hash(&hash) {
        return Err(ApiError::invalid(
            "hash",
            "must be 64 hexadecimal characters",
        ));
    }
    let of = |n: Option<usize>, alpha: Option<f32>| crate::expand::Expansion {
        n: n.unwrap_or(0),
        alpha: alpha.unwrap_or(crate::expand::DEFAULT_ALPHA),
    };
    let rerank = crate::expand::Rerank {
        qe: of(qe, qa),
        dba: of(dba, da),
    };
    // The error names the URL's parameter.
    rerank.validate().map_err(|(field, why)| {
        let key = match field {
            "qe_alpha" => "qa",
            "dba_alpha" => "da",
            key => key,
        };
        ApiError::invalid(key, why)
    })?;
    let hash = hash.to_ascii_lowercase();
    let filter = kadr_types::filter::Filter::parse(
        split.as_deref().unwrap_or(""),
        category.as_deref().unwrap_or(""),
    );
    // A stored analysis is a search: it never queues behind the uploads being embedded.
    let (probe, f) = (hash.clone(), filter.clone());
    if let Some(a) =
        crate::backend::blocking(move |b| b.cached_analysis(&probe, &f, &rerank)).await?
    {
        return Ok(a);
    }
    // An indexed image seen for the first time is embedded: that waits its turn like uploads.
    let slot = crate::backend::backend()?
        .admit()
        .await
        .inspect_err(|e| e.set_response_status())?;
    crate::backend::blocking(move |b| {
        let _slot = slot;
        b.analysis(&hash, &filter, &rerank)
    })
    .await
}

/// Which of the trained head and the neighbours' vote gives the categories when the tuning
/// says `by=best`, under the vote of the given tuning (the same URL names as the pages): the
/// one more accurate on the served folders' `valid/` images, and the figures.
#[server(prefix = "/api/v1", endpoint = "choice", input = GetUrl)]
pub async fn get_choice(
    t: Option<f32>,
    rel: Option<bool>,
    conf: Option<f32>,
    k: Option<usize>,
    mode: Option<String>,
    rename: Option<String>,
    ignore: Option<String>,
) -> Result<CategoryChoice, ApiError> {
    let defaults = crate::backend::backend()?.defaults().tuning;
    let (_, cfg) = crate::tuning::TuningArgs {
        t,
        rel,
        conf,
        k,
        mode,
        rename,
        ignore,
        ..Default::default()
    }
    .tuning(&defaults)?;
    crate::backend::blocking(move |b| b.choice(&cfg)).await
}

/// [`get_choice`] for a tuning: its vote's fields as the server function's arguments.
pub async fn choice_for(t: Tuning) -> Result<CategoryChoice, ApiError> {
    let a = crate::tuning::TuningArgs::of(t);
    get_choice(a.t, a.rel, a.conf, a.k, a.mode, a.rename, a.ignore).await
}

/// The server's defaults for tuning and uploads.
#[server(prefix = "/api/v1", endpoint = "settings", input = GetUrl)]
pub async fn get_defaults() -> Result<UiDefaults, ApiError> {
    Ok(crate::backend::backend()?.defaults())
}
