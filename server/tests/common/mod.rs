//! Helpers shared by the server's integration tests: the crate-wide test kit and a real
//! `kadr serve` process.
#![allow(dead_code)]

pub mod server;

pub use kadr_testkit::*;
