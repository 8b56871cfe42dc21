//! Analyse: upload images, see for each the most similar indexed images (visual match), the
//! category their neighbours vote for (category match) and what words say about it (AI text),
//! tune how matches and votes are counted, export the batch as CSV or as a submission.
//!
//! Server functions: `POST /api/v1/analyse` (multipart, field `files`, many at once),
//! `GET /api/v1/analysis?hash=`, `GET /api/v1/settings`. Every analysis has a permanent page
//! `/a/{hash}` that the server renders in full, so it works without JavaScript.

//!
//! Inside: [`server`] (the server functions and the per-file outcome), [`items`] (the upload
//! queue's state on the page), `upload` (the browser side: downscale and send in batches) and
//! [`page`] (the components). Dependencies run one way: page → upload → items, server.

pub mod items;
pub mod page;
pub mod server;
#[cfg(feature = "hydrate")]
mod upload;

pub use items::*;
pub use page::*;
pub use server::*;
