//! Duplicates and leakage, as the CLI prints them and the API and dashboard show them.

use serde::{Deserialize, Serialize};

/// The cosine similarity at or above which two different files are near copies, for the
/// default backbone (EfficientNet-Lite0): calibrated by `bench/dupes.sh` on resized,
/// recompressed, cropped and flipped copies of Tux Paint stamps.
pub const DEFAULT_NEAR_SIMILARITY: f32 = 0.8;

/// Pairs the API answers with by default, and at most.
pub const DEFAULT_PAIRS: usize = 100;
pub const MAX_PAIRS: usize = 10_000;

/// How two images are the same.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DupeKind {
    /// The same bytes (same content hash).
    Exact,
    /// A resized, recompressed, cropped or flipped copy: cosine similarity of the embeddings at
    /// or above the report's threshold.
    Near,
}

impl DupeKind {
    /// Its name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Near => "near",
        }
    }
}

/// Whether a user may ask for `threshold`: finite, within 0..1 (the CLI's and the API's bound;
/// the finder itself takes any cosine).
pub fn valid_threshold(threshold: f32) -> bool {
    threshold.is_finite() && (0.0..=1.0).contains(&threshold)
}

/// What a duplicate pair leaks: the same image on both sides of a split, or under two names.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Leak {
    /// In two splits (`train/` and `test/`, …): an evaluation scores a copy against itself.
    Split,
    /// Labelled with two categories.
    Category,
}

/// Two images that are copies of each other.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DupePair {
    /// Paths relative to the folder searched, `a` < `b`.
    pub a: String,
    pub b: String,
    /// Their content hashes (`/img/{hash}` serves them).
    pub a_hash: String,
    pub b_hash: String,
    pub kind: DupeKind,
    /// Cosine similarity of their embeddings (1 for exact copies).
    pub similarity: f32,
    /// Empty when both are in the same split and category.
    pub leakage: Vec<Leak>,
}

/// The duplicates of a set of folders.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DupesReport {
    /// Images compared.
    pub images: u64,
    /// The similarity at or above which two different files are near copies.
    pub threshold: f32,
    /// Pairs found of each kind, and those that leak, counting pairs [`Self::pairs`] may
    /// leave out.
    pub exact: u64,
    pub near: u64,
    pub split_leaks: u64,
    pub category_leaks: u64,
    /// Exact pairs first, then near pairs, most similar first (the API's `limit` first ones).
    pub pairs: Vec<DupePair>,
}

impl DupesReport {
    /// A report of `pairs` with its counts.
    pub fn new(images: u64, threshold: f32, pairs: Vec<DupePair>) -> Self {
        let count = |f: &dyn Fn(&DupePair) -> bool| pairs.iter().filter(|p| f(p)).count() as u64;
        Self {
            images,
            threshold,
            exact: count(&|p| p.kind == DupeKind::Exact),
            near: count(&|p| p.kind == DupeKind::Near),
            split_leaks: count(&|p| p.leakage.contains(&Leak::Split)),
            category_leaks: count(&|p| p.leakage.contains(&Leak::Category)),
            pairs,
        }
    }
}
