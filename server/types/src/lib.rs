//! What the browser and the engine share, so both compute exactly the same thing: [`vote`]
//! (a category from the nearest neighbours, re-ranking under a tuning), [`expand`] (query
//! expansion) and [`types`] (the API's data: analyses, hits, tunings, dashboard figures;
//! [`dupes`], the duplicates found). Plain serde data and pure code; it builds for wasm32 (the
//! app's hydrate side) and for the host (engine and server).

pub mod dupes;
pub mod expand;
pub mod filter;
pub mod types;
pub mod vote;
