//! Which indexed images a search may return: a filter on their split and category, applied
//! inside the vector index (FAISS: an id selector; Milvus: a boolean expression).

use serde::{Deserialize, Serialize};

/// Which vectors a search may return: those whose split is one of `splits` and whose category
/// is one of `categories`; an empty list does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Filter {
    pub splits: Vec<String>,
    pub categories: Vec<String>,
}

impl Filter {
    /// No restriction.
    pub fn all() -> Self {
        Self::default()
    }

    /// The labelled references a submission votes with: `train/` and `valid/` images, and
    /// those of a folder without splits (split `""`): never `test/` images.
    pub fn references() -> Self {
        Self {
            splits: vec![String::new(), "train".into(), "valid".into()],
            categories: Vec::new(),
        }
    }

    /// Whether the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty() && self.categories.is_empty()
    }

    /// Whether a vector with these attributes passes.
    pub fn matches(&self, split: &str, category: &str) -> bool {
        (self.splits.is_empty() || self.splits.iter().any(|s| s == split))
            && (self.categories.is_empty() || self.categories.iter().any(|c| c == category))
    }

    /// A filter from comma-separated lists (`"train,valid"`); blanks are ignored.
    pub fn parse(splits: &str, categories: &str) -> Self {
        let list = |s: &str| {
            let mut v: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            v.sort();
            v.dedup();
            v
        };
        Self {
            splits: list(splits),
            categories: list(categories),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse(" valid, train,,train", "");
        assert_eq!(f.splits, ["train", "valid"]);
        assert!(f.matches("train", "cat") && f.matches("valid", ""));
        assert!(!f.matches("test", "cat"));
        assert!(
            Filter::references().matches("", "cat") && !Filter::references().matches("test", "cat")
        );
        let c = Filter::parse("", "dog");
        assert!(c.matches("test", "dog") && !c.matches("test", "cat"));
        assert!(Filter::parse(" , ", "").is_empty());
        assert!(Filter::all().matches("anything", "at all"));
    }
}
