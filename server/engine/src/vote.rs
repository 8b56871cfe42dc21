//! Vote: a category from the nearest neighbours. The logic lives in the `kadr-types` crate so
//! that the browser re-ranks results with exactly the code the engine evaluates with; this
//! module keeps its place in the engine's data flow.

pub use kadr_types::vote::*;
