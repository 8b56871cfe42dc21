//! Types shared by the server and the browser; plain data, serialisable, no behaviour.

use serde::{Deserialize, Serialize};

/// What the index holds, as shown on the home page.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IndexSummary {
    /// Embedding model the index was built with.
    pub model: String,
    /// Images in the index, all splits together.
    pub images: u64,
    /// Images per split and category.
    pub categories: Vec<CategoryCount>,
}

/// Number of indexed images in one category of one split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CategoryCount {
    /// Dataset split, such as `train` or `val`.
    pub split: String,
    /// Category label.
    pub category: String,
    /// Images of this category in this split.
    pub images: u64,
}
