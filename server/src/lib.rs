//! kadr's engine, in the order data flows through it:
//! [`decode`] → [`preprocess`] → [`embed`] (networks in [`models`]; with [`text`] embedding
//! each image's text and [`fusion`] joining the two; [`vlm`] captions and labels images) →
//! [`index`] + [`store`] (tied together by [`workspace`]) → [`vote`] → [`eval`] / [`submit`];
//! [`dataset`] finds labelled images on disk, [`config`] reads settings.
//!
//! Serving: [`web`] mounts the Leptos app (pages and server functions of the `app` crate) over
//! [`backend`] (the engine behind the app, with [`history`] of analyses and the jobs), plus the
//! REST routes of [`api`] described by [`openapi`]. In front of them: [`limits`] (body size,
//! time, rate per client), [`auth`] (keys, sign-in), the embedding [`queue`], and
//! [`telemetry`] (logs and Prometheus metrics).

#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod backend;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod embed;
pub mod eval;
pub mod fusion;
pub mod history;
pub mod index;
pub mod jobs;
pub mod limits;
pub mod models;
pub mod openapi;
pub mod preprocess;
pub mod queue;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod text;
pub mod vlm;
pub mod vote;
pub mod web;
pub mod workspace;

/// The read-only shared folder (goldens, manifests, bundled weights): `KADR_SHARED`, or
/// `../shared` beside the repository.
#[doc(hidden)]
pub fn shared_dir() -> std::path::PathBuf {
    std::env::var_os("KADR_SHARED")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}
