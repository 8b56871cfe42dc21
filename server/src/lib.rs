//! kadr's engine, in the order data flows through it:
//! [`decode`] → [`preprocess`] → [`embed`] (networks in [`models`]; with [`text`] embedding
//! each image's text and [`fusion`] joining the two) → [`index`] + [`store`] (tied together by
//! [`workspace`]) → [`vote`] → [`eval`] / [`submit`]; [`dataset`] finds labelled images on
//! disk, [`config`] reads settings, and [`web`] serves the app.

pub mod backend;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod embed;
pub mod eval;
pub mod fusion;
pub mod index;
pub mod jobs;
pub mod models;
pub mod preprocess;
pub mod store;
pub mod submit;
pub mod text;
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
