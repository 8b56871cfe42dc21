//! kadr's server: [`web`] mounts the Leptos app (pages and server functions of the `app`
//! crate) over [`backend`] (the engine behind the app, split by job: uploads, jobs, folders,
//! dashboard), with [`history`] of analyses, plus the REST routes of [`api`] described by
//! [`openapi`]. In front of them: [`conn`] (header and idle timeouts, the connection cap), [`limits`]
//! (body size, time, rate per client), [`auth`]
//! (keys, sign-in), the upload [`queue`], and [`telemetry`] (logs and Prometheus metrics).
//! The engine itself is the `kadr-engine` crate; the `kadr` CLI is `main.rs` + `cli/`.

#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod backend;
pub mod conn;
pub mod history;
pub mod limits;
pub mod openapi;
pub mod queue;
pub mod telemetry;
pub mod web;
