//! Query expansion. The logic lives in the `kadr-types` crate, so the web app's tuning and
//! the engine's search share one definition and one set of limits; this module keeps its
//! place in the engine's data flow (index → search, expanded → vote).

pub use kadr_types::expand::*;
