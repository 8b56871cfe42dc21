//! Vote: a category from the nearest neighbours. Majority or similarity-weighted, with an
//! absolute and a relative (to the best hit) similarity threshold, a minimum confidence, and
//! category rules applied to the neighbours' labels before counting.
//!
//! Pure code shared by the engine (evaluation, submissions) and the browser, which re-ranks
//! results on screen with it when a setting changes, without asking the server again.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How neighbours are counted.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VoteMode {
    /// One neighbour, one vote; ties go to the larger similarity sum.
    #[default]
    Majority,
    /// Each neighbour votes with its similarity.
    Weighted,
}

/// Neighbours used for voting and for MAP@k.
pub const DEFAULT_K: usize = 10;
/// Similarity below which a neighbour does not vote (cosine on L2-normalised vectors), for
/// evaluation and the CLI; the web app's default threshold is a server setting.
pub const DEFAULT_MIN_SIMILARITY: f32 = 0.0;

impl VoteMode {
    /// The lowercase name used in URLs, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Majority => "majority",
            Self::Weighted => "weighted",
        }
    }
}

impl std::str::FromStr for VoteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "majority" => Ok(Self::Majority),
            "weighted" => Ok(Self::Weighted),
            _ => Err(format!("unknown vote mode {s:?}: use majority or weighted")),
        }
    }
}

/// Renames, merges and ignores applied to labels before voting.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryRules {
    /// `from → to`; several names mapped to one merge them.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Categories whose neighbours do not vote (after renaming).
    #[serde(default)]
    pub ignore: BTreeSet<String>,
}

impl CategoryRules {
    /// The label a category counts as, or `None` when it is ignored.
    pub fn apply<'a>(&'a self, category: &'a str) -> Option<&'a str> {
        let c = self
            .rename
            .get(category)
            .map(String::as_str)
            .unwrap_or(category);
        (!self.ignore.contains(c)).then_some(c)
    }

    /// Parses `a=b,c=b` renames and `x,y` ignores (the CLI's and the URL's form).
    pub fn parse(rename: &str, ignore: &str) -> Result<Self, String> {
        let mut rules = Self::default();
        for pair in rename.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (from, to) = pair
                .split_once('=')
                .filter(|(f, t)| !f.trim().is_empty() && !t.trim().is_empty())
                .ok_or_else(|| format!("bad rename rule {pair:?}: use from=to"))?;
            rules
                .rename
                .insert(from.trim().to_string(), to.trim().to_string());
        }
        rules.ignore = ignore
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        Ok(rules)
    }
}

/// Voting settings.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoteConfig {
    /// Neighbours considered.
    pub k: usize,
    pub mode: VoteMode,
    /// Neighbours below this cosine similarity do not vote.
    pub min_similarity: f32,
    /// If set, neighbours below `best × relative` do not vote (0–1).
    pub relative_to_best: Option<f32>,
    /// Below this confidence the vote gives no category.
    pub min_confidence: f32,
    #[serde(default)]
    pub rules: CategoryRules,
}

impl Default for VoteConfig {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            mode: VoteMode::Majority,
            min_similarity: DEFAULT_MIN_SIMILARITY,
            relative_to_best: None,
            min_confidence: 0.0,
            rules: CategoryRules::default(),
        }
    }
}

/// The outcome of a vote.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The winning category, or `None` when no neighbour voted or confidence was too low.
    pub category: Option<String>,
    /// The winner's share of the votes (0–1).
    pub confidence: f32,
    /// Every category's share, largest first.
    pub split: Vec<(String, f32)>,
    /// How many neighbours voted.
    pub voters: usize,
}

impl VoteConfig {
    /// The similarity below which neighbours do not count, given the best one's.
    pub fn floor(&self, best: f32) -> f32 {
        self.relative_to_best
            .map_or(self.min_similarity, |r| self.min_similarity.max(best * r))
    }
}

/// Indices of the neighbours (best first) that pass `cfg`'s k and thresholds: the ones shown
/// as matches and counted by [`vote`] (before category rules).
pub fn passing(scores: &[f32], cfg: &VoteConfig) -> Vec<usize> {
    let top = &scores[..scores.len().min(cfg.k)];
    let best = top.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = cfg.floor(best);
    (0..top.len())
        .filter(|&i| !top[i].is_nan() && top[i] >= floor)
        .collect()
}

/// Votes over `(category, similarity)` neighbours, best first. Neighbours without a category
/// (`""`) do not vote, as in evaluation and submissions, whose references are all labelled.
pub fn vote<'a>(neighbours: impl IntoIterator<Item = (&'a str, f32)>, cfg: &VoteConfig) -> Vote {
    let hits: Vec<(&str, f32)> = neighbours.into_iter().take(cfg.k).collect();
    let best = hits.iter().map(|h| h.1).fold(f32::NEG_INFINITY, f32::max);
    let floor = cfg.floor(best);
    // (votes, similarity sum) per category
    let mut tally: BTreeMap<&str, (f32, f32)> = BTreeMap::new();
    let mut voters = 0;
    for (cat, score) in hits {
        // An unlabelled neighbour (an image indexed outside any category folder) is shown
        // but has nothing to vote for.
        if score < floor || score.is_nan() || cat.is_empty() {
            continue;
        }
        let Some(cat) = cfg.rules.apply(cat) else {
            continue;
        };
        let e = tally.entry(cat).or_default();
        e.0 += match cfg.mode {
            VoteMode::Majority => 1.0,
            VoteMode::Weighted => score.max(0.0),
        };
        e.1 += score;
        voters += 1;
    }
    let total: f32 = tally.values().map(|v| v.0).sum();
    let mut split: Vec<(String, f32, f32)> = tally
        .into_iter()
        .map(|(c, (v, s))| (c.to_string(), if total > 0.0 { v / total } else { 0.0 }, s))
        .collect();
    split.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(b.2.total_cmp(&a.2))
            .then(a.0.cmp(&b.0))
    });
    let confidence = split.first().map_or(0.0, |w| w.1);
    let category = split
        .first()
        .filter(|_| voters > 0 && confidence >= cfg.min_confidence)
        .map(|w| w.0.clone());
    Vote {
        category,
        confidence,
        split: split.into_iter().map(|(c, v, _)| (c, v)).collect(),
        voters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_with_tie_broken_by_similarity() {
        // Two votes each; a's similarity sum (1.5) beats b's (1.3).
        let n = [("b", 0.9), ("a", 0.8), ("b", 0.4), ("a", 0.7)];
        let v = vote(n, &VoteConfig::default());
        assert_eq!(v.category.as_deref(), Some("a"));
        assert_eq!(v.confidence, 0.5);
        let n = [("a", 0.9), ("b", 0.8), ("b", 0.7)];
        let v = vote(n, &VoteConfig::default());
        assert_eq!(v.category.as_deref(), Some("b"));
        assert!((v.confidence - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn weighted_thresholds_rules_and_confidence() {
        let n = [("a", 0.9), ("b", 0.3), ("b", 0.3)];
        let weighted = VoteConfig {
            mode: VoteMode::Weighted,
            ..Default::default()
        };
        assert_eq!(vote(n, &weighted).category.as_deref(), Some("a"));
        let thresholded = VoteConfig {
            min_similarity: 0.5,
            ..Default::default()
        };
        let v = vote(n, &thresholded);
        assert_eq!((v.category.as_deref(), v.voters), (Some("a"), 1));
        let relative = VoteConfig {
            relative_to_best: Some(0.5),
            ..Default::default()
        };
        assert_eq!(vote(n, &relative).voters, 1);
        let rules = CategoryRules::parse("b=a", "").unwrap();
        let v = vote(
            n,
            &VoteConfig {
                rules,
                ..Default::default()
            },
        );
        assert_eq!((v.category.as_deref(), v.confidence), (Some("a"), 1.0));
        let ignore = CategoryRules::parse("", "a").unwrap();
        assert_eq!(
            vote(
                n,
                &VoteConfig {
                    rules: ignore,
                    ..Default::default()
                }
            )
            .category
            .as_deref(),
            Some("b")
        );
        let strict = VoteConfig {
            min_confidence: 0.9,
            ..Default::default()
        };
        assert_eq!(vote(n, &strict).category, None);
        let k1 = VoteConfig {
            k: 1,
            ..Default::default()
        };
        assert_eq!(vote(n, &k1).voters, 1);
        assert_eq!(vote([], &VoteConfig::default()).category, None);
        assert!(CategoryRules::parse("oops", "").is_err());
    }

    #[test]
    fn unlabelled_neighbours_do_not_vote() {
        let n = [("", 0.95), ("", 0.9), ("a", 0.5), ("b", 0.4), ("a", 0.3)];
        let v = vote(n, &VoteConfig::default());
        assert_eq!(v.category.as_deref(), Some("a"));
        assert_eq!(v.voters, 3);
        assert!((v.confidence - 2.0 / 3.0).abs() < 1e-6);
        assert!(v.split.iter().all(|(c, _)| !c.is_empty()), "{:?}", v.split);
        // They still take their place among the k nearest.
        let k2 = VoteConfig {
            k: 2,
            ..Default::default()
        };
        let v = vote(n, &k2);
        assert_eq!((v.category, v.voters), (None, 0));
        // A rename cannot give them a category either.
        let renamed = VoteConfig {
            rules: CategoryRules::parse("=a", "").unwrap_or_default(),
            ..Default::default()
        };
        assert_eq!(vote(n, &renamed).voters, 3);
    }
}
