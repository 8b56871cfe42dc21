//! Types shared by the server and the browser: plain serialisable data, the one vocabulary of
//! server functions, the REST API and the pages. Behaviour that both sides need (re-ranking
//! under a [`Tuning`]) is here too, so the browser and the CSV export agree to the digit.

use crate::expand::{Expansion, Rerank};
use crate::vote::{passing, vote, CategoryRules, Vote, VoteConfig, VoteMode};
use serde::{Deserialize, Serialize};

/// Most neighbours a search returns; `k` can be tuned up to this without searching again.
pub const MAX_K: usize = 50;
/// Longest category rule strings accepted (rename / ignore lists).
pub const MAX_RULES_LEN: usize = 2000;

/// What the index holds, as shown on the dataset page.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IndexSummary {
    /// Embedding model the index was built with.
    pub model: String,
    /// Images in the index, all splits together.
    pub images: u64,
    /// Images per split and category.
    pub categories: Vec<CategoryCount>,
    /// Dataset folders the server indexes.
    pub folders: Vec<String>,
}

/// Number of indexed images in one category of one split.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CategoryCount {
    /// Dataset split: `train`, `valid`, `test`, or empty for a folder without splits.
    pub split: String,
    /// Category label.
    pub category: String,
    /// Images of this category in this split.
    pub images: u64,
}

/// The settings that turn neighbours into matches and a category. They live in the page URL
/// (see [`Tuning::to_query`]) so a view can be shared; defaults come from the server.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Similarity threshold: absolute cosine similarity, or a fraction of the best hit's.
    pub threshold: f32,
    /// Whether `threshold` is relative to the best hit.
    pub relative: bool,
    /// Below this vote share no category is given (0–1).
    pub min_confidence: f32,
    /// Neighbours shown and voting (1–[`MAX_K`]).
    pub k: usize,
    /// Majority or similarity-weighted vote.
    pub mode: VoteMode,
    /// Category renames and merges, `from=to,from2=to`.
    pub rename: String,
    /// Categories that do not vote, `a,b`.
    pub ignore: String,
    /// Query expansion: neighbours averaged into the query before it is searched again (0:
    /// off). Unlike the rest, changing it searches again.
    #[serde(default)]
    pub qe: usize,
    /// Query expansion's weighting exponent.
    #[serde(default = "default_alpha")]
    pub qe_alpha: f32,
    /// Database-side augmentation: the indexed images are searched as each averaged with its
    /// `dba` nearest others (0: off). Changing it searches again.
    #[serde(default)]
    pub dba: usize,
    /// Database-side augmentation's weighting exponent.
    #[serde(default = "default_alpha")]
    pub dba_alpha: f32,
    /// What gives the category: the neighbours' vote, the trained head, or the better of the
    /// two on `valid/`.
    #[serde(default)]
    pub by: Decider,
}

fn default_alpha() -> f32 {
    crate::expand::DEFAULT_ALPHA
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            threshold: 0.3,
            relative: false,
            min_confidence: 0.0,
            k: crate::vote::DEFAULT_K,
            mode: VoteMode::Majority,
            rename: String::new(),
            ignore: String::new(),
            qe: 0,
            qe_alpha: crate::expand::DEFAULT_ALPHA,
            dba: 0,
            dba_alpha: crate::expand::DEFAULT_ALPHA,
            by: Decider::Best,
        }
    }
}

/// What gives an analysis its category.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decider {
    /// The head when one is trained for the space and it is more accurate than the vote on
    /// the served folders' `valid/` split (against `train/`), else the vote: what `kadr
    /// submit` does.
    #[default]
    Best,
    /// The nearest neighbours' vote.
    Vote,
    /// The trained category head (`kadr train`); no category where there is none.
    Head,
}

impl Decider {
    /// The lowercase name used in URLs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Best => "best",
            Self::Vote => "vote",
            Self::Head => "head",
        }
    }
}

impl std::str::FromStr for Decider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "best" => Ok(Self::Best),
            "vote" => Ok(Self::Vote),
            "head" => Ok(Self::Head),
            _ => Err(format!(
                "unknown category source {s:?}: use best, vote or head"
            )),
        }
    }
}

/// Which of the vote and the head gives the categories under one vote configuration, and
/// the figures it was chosen by (what [`Decider::Best`] resolves to).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CategoryChoice {
    /// [`Decider::Vote`] or [`Decider::Head`].
    pub by: Decider,
    /// Whether a head is trained for this embedding space.
    pub head: bool,
    /// Accuracy on the served folders' `valid/` images (against `train/`), when there are
    /// some and a head.
    pub head_accuracy: Option<f64>,
    pub vote_accuracy: Option<f64>,
    /// Why, in words ("the head scores 0.912 on valid/, the 10-NN vote 0.874").
    pub reason: String,
}

impl CategoryChoice {
    /// The vote, for `reason`.
    pub fn vote(reason: impl Into<String>) -> Self {
        Self {
            by: Decider::Vote,
            head: false,
            head_accuracy: None,
            vote_accuracy: None,
            reason: reason.into(),
        }
    }
}

/// The category an analysis is given, and by what.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `None`: uncertain (no vote, below the minimum confidence, an ignored category, or
    /// no head where the head was asked for).
    pub category: Option<String>,
    /// The vote's share, or the head's calibrated probability.
    pub confidence: f32,
    /// [`Decider::Vote`] or [`Decider::Head`].
    pub by: Decider,
}

/// A rejected input: which field and why.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Tuning {
    /// Checks every field; the first bad one is reported.
    pub fn validate(&self) -> Result<VoteConfig, FieldError> {
        let bad = |field: &str, message: String| FieldError {
            field: field.into(),
            message,
        };
        if !self.threshold.is_finite() || !(-1.0..=1.0).contains(&self.threshold) {
            return Err(bad(
                "threshold",
                format!("must be between -1 and 1, got {}", self.threshold),
            ));
        }
        if self.relative && self.threshold < 0.0 {
            return Err(bad(
                "threshold",
                "a relative threshold must be between 0 and 1".into(),
            ));
        }
        if !self.min_confidence.is_finite() || !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(bad(
                "min_confidence",
                format!("must be between 0 and 1, got {}", self.min_confidence),
            ));
        }
        if !(1..=MAX_K).contains(&self.k) {
            return Err(bad("k", format!("must be 1 to {MAX_K}, got {}", self.k)));
        }
        for (field, value) in [("rename", &self.rename), ("ignore", &self.ignore)] {
            if value.len() > MAX_RULES_LEN {
                return Err(bad(
                    field,
                    format!("longer than {MAX_RULES_LEN} characters"),
                ));
            }
        }
        self.rerank()
            .validate()
            .map_err(|(field, why)| bad(field, why))?;
        let rules =
            CategoryRules::parse(&self.rename, &self.ignore).map_err(|m| bad("rename", m))?;
        Ok(VoteConfig {
            k: self.k,
            mode: self.mode,
            min_similarity: if self.relative { -1.0 } else { self.threshold },
            relative_to_best: self.relative.then_some(self.threshold),
            min_confidence: self.min_confidence,
            rules,
        })
    }

    /// The query expansion asked for.
    pub fn expansion(&self) -> Expansion {
        Expansion {
            n: self.qe,
            alpha: self.qe_alpha,
        }
    }

    /// The database-side augmentation asked for.
    pub fn augmentation(&self) -> Expansion {
        Expansion {
            n: self.dba,
            alpha: self.dba_alpha,
        }
    }

    /// How searches re-rank under this tuning.
    pub fn rerank(&self) -> Rerank {
        Rerank {
            qe: self.expansion(),
            dba: self.augmentation(),
        }
    }

    /// The URL query form: `t=0.3&rel=0&conf=0&k=10&mode=majority`, then what is set of
    /// `rename=…`, `ignore=…`, `qe=2&qa=3` (with expansion on), `dba=5&da=3` (with
    /// augmentation on) and `by=vote|head`.
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "t={}&rel={}&conf={}&k={}&mode={}",
            self.threshold,
            u8::from(self.relative),
            self.min_confidence,
            self.k,
            self.mode.as_str()
        );
        for (key, value) in [("rename", &self.rename), ("ignore", &self.ignore)] {
            if !value.is_empty() {
                q.push_str(&format!("&{key}={}", encode_component(value)));
            }
        }
        if self.qe > 0 {
            q.push_str(&format!("&qe={}&qa={}", self.qe, self.qe_alpha));
        }
        if self.dba > 0 {
            q.push_str(&format!("&dba={}&da={}", self.dba, self.dba_alpha));
        }
        if self.by != Decider::Best {
            q.push_str(&format!("&by={}", self.by.as_str()));
        }
        q
    }

    /// Reads the URL query form; absent or unreadable values keep `defaults`' (a shared link
    /// must never fail to open), and [`Tuning::validate`] judges the rest.
    pub fn from_query(get: impl Fn(&str) -> Option<String>, defaults: &Tuning) -> Tuning {
        let num = |key: &str| get(key).and_then(|v| v.trim().parse::<f32>().ok());
        Tuning {
            threshold: num("t").unwrap_or(defaults.threshold),
            relative: get("rel").map_or(defaults.relative, |v| v == "1" || v == "true"),
            min_confidence: num("conf").unwrap_or(defaults.min_confidence),
            k: get("k")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(defaults.k),
            mode: get("mode")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.mode),
            rename: get("rename").unwrap_or_else(|| defaults.rename.clone()),
            ignore: get("ignore").unwrap_or_else(|| defaults.ignore.clone()),
            qe: get("qe")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(defaults.qe),
            qe_alpha: num("qa").unwrap_or(defaults.qe_alpha),
            dba: get("dba")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(defaults.dba),
            dba_alpha: num("da").unwrap_or(defaults.dba_alpha),
            by: get("by")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.by),
        }
    }

    /// The URL query keys [`Tuning::from_query`] reads.
    pub const KEYS: [&'static str; 12] = [
        "t", "rel", "conf", "k", "mode", "rename", "ignore", "qe", "qa", "dba", "da", "by",
    ];

    /// Checks the raw value of URL key `key` for the API, where a value that does not parse
    /// is a 4xx instead of the default a shared page link falls back to. Unknown keys pass
    /// (the caller decides).
    pub fn check_raw(key: &str, value: &str) -> Result<(), FieldError> {
        let v = value.trim();
        let ok = match key {
            "t" | "conf" | "qa" | "da" => v.parse::<f32>().is_ok(),
            "k" | "qe" | "dba" => v.parse::<usize>().is_ok(),
            "rel" => matches!(v, "0" | "1" | "true" | "false"),
            "mode" => v.parse::<VoteMode>().is_ok(),
            "by" => v.parse::<Decider>().is_ok(),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(FieldError {
                field: key.into(),
                message: format!("bad value {value:?}"),
            })
        }
    }
}

/// Percent-encodes a URL query value (RFC 3986 unreserved characters pass).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Server settings the web app starts from.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UiDefaults {
    /// Default tuning (`THRESHOLD`, `K`, ... on the server).
    pub tuning: Tuning,
    /// Files sent per upload request (`BATCH_SIZE`).
    pub batch_size: usize,
    /// Longer image side above which the browser downscales before upload (`UPLOAD_MAX_SIDE`).
    pub upload_max_side: u32,
    /// Largest file accepted, in bytes (`MAX_UPLOAD_BYTES`).
    pub max_upload_bytes: u64,
    /// Whether a vision-language model gives captions and zero-shot labels.
    pub vlm: bool,
    /// Embedding model id.
    pub model: String,
}

/// One indexed image found similar to a query.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hit {
    /// Content hash: the key of its image (`/img/{hash}`) and of its own analysis (`/a/{hash}`).
    pub hash: String,
    /// Path relative to its dataset folder.
    pub path: String,
    pub split: String,
    pub category: String,
    /// Cosine similarity.
    pub score: f32,
}

/// Longest sentence a text search takes, in characters.
pub const MAX_SEARCH_TEXT: usize = 1000;

/// Checks a text search's sentence: something besides white space, at most
/// [`MAX_SEARCH_TEXT`] characters. Returns it trimmed, or why not.
pub fn check_search_text(text: &str) -> Result<&str, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the text to search for is empty".into());
    }
    let n = t.chars().count();
    if n > MAX_SEARCH_TEXT {
        return Err(format!(
            "the text to search for has {n} characters; at most {MAX_SEARCH_TEXT}"
        ));
    }
    Ok(t)
}

/// Whether `s` is a content hash: 64 hexadecimal characters (either case).
pub fn is_content_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The answer to a search by text (`GET /api/v1/search`): the indexed images whose texts are
/// most like the sentence, or (with an example image) most like the image and the sentence
/// together.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TextSearch {
    /// The sentence searched for, trimmed.
    pub text: String,
    /// Content hash of the example image fused with it, if any.
    pub example: Option<String>,
    /// Best first; scores are cosine similarities (fused ones with an example image).
    pub hits: Vec<Hit>,
    /// The text model that embedded the sentence and the images' texts.
    pub text_model: String,
    /// Time the search took, in milliseconds.
    pub search_ms: f32,
}

/// Where the text analysis comes from.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    /// The backbone's own ImageNet classifier: top labels, no caption.
    ImagenetLabels,
    /// The vision-language model: a caption and zero-shot labels over the categories.
    Vlm,
}

/// A label with its probability.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScoredLabel {
    pub label: String,
    pub score: f32,
}

/// What words say about the image.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TextAnalysis {
    pub source: TextSource,
    pub caption: Option<String>,
    pub labels: Vec<ScoredLabel>,
}

/// What the trained category head says about an image.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HeadGuess {
    /// The most probable category.
    pub category: String,
    /// Its calibrated probability (temperature-scaled on `valid/` when there was one).
    pub probability: f32,
    /// The most probable categories, best first (the first is `category`).
    pub top: Vec<ScoredLabel>,
}

/// Milliseconds per stage of one analysis.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StageTimings {
    pub decode_ms: f32,
    pub embed_ms: f32,
    pub search_ms: f32,
    pub text_ms: f32,
}

/// A query image and everything found about it, before tuning is applied: the top
/// [`MAX_K`] hits, so any tuning can be applied on screen without searching again.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Content hash of the uploaded bytes: the permanent URL is `/a/{hash}`.
    pub hash: String,
    /// File name as uploaded (or the indexed path).
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Most similar indexed images, best first.
    pub hits: Vec<Hit>,
    pub text: TextAnalysis,
    pub timings: StageTimings,
    /// Unix seconds when it was first analysed.
    pub created_at: i64,
    /// The category it is filed under when the image itself is indexed.
    pub indexed_category: Option<String>,
    /// The trained head's guess, when a head is trained for this embedding space.
    #[serde(default)]
    pub head: Option<HeadGuess>,
    /// The query expansion the hits were searched with (`n` 0: none).
    #[serde(default)]
    pub expansion: Expansion,
    /// The database-side augmentation the hits were searched with (`n` 0: none).
    #[serde(default)]
    pub augmentation: Expansion,
}

/// An analysis seen through a tuning: the matches shown and the vote.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked<'a> {
    pub matches: Vec<&'a Hit>,
    pub vote: Vote,
}

impl Analysis {
    /// Applies `cfg`: matches are the hits within k and above the threshold; the vote counts
    /// them under the category rules.
    pub fn rank(&self, cfg: &VoteConfig) -> Ranked<'_> {
        let scores: Vec<f32> = self.hits.iter().map(|h| h.score).collect();
        let matches: Vec<&Hit> = passing(&scores, cfg)
            .into_iter()
            .map(|i| &self.hits[i])
            .collect();
        let vote = vote(
            self.hits.iter().map(|h| (h.category.as_str(), h.score)),
            cfg,
        );
        Ranked { matches, vote }
    }

    /// The category by `by` (the vote or the head; [`Decider::Best`] is resolved by the
    /// caller's [`CategoryChoice`], and counts as the vote here) from this analysis ranked
    /// under `cfg`. The head's category goes through the same renames and ignores as the
    /// neighbours' and the same minimum confidence, on its probability.
    pub fn decide(&self, ranked: &Ranked<'_>, cfg: &VoteConfig, by: Decider) -> Decision {
        if by != Decider::Head {
            return Decision {
                category: ranked.vote.category.clone(),
                confidence: ranked.vote.confidence,
                by: Decider::Vote,
            };
        }
        let Some(h) = &self.head else {
            return Decision {
                category: None,
                confidence: 0.0,
                by: Decider::Head,
            };
        };
        let category = cfg
            .rules
            .apply(&h.category)
            .filter(|_| h.probability >= cfg.min_confidence)
            .map(str::to_string);
        Decision {
            category,
            confidence: h.probability,
            by: Decider::Head,
        }
    }
}

/// Counts in one bucket.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Count {
    pub label: String,
    pub count: u64,
}

/// The dashboard's figures over everything analysed so far, under one tuning.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Stats {
    /// Images analysed (distinct contents).
    pub analyses: u64,
    /// Voted category counts (`(none)` where no category was given).
    pub categories: Vec<Count>,
    /// Vote confidence in ten bins, 0–0.1 … 0.9–1.0.
    pub confidence_histogram: Vec<u64>,
    /// Mean milliseconds per stage over fresh (non-cached) analyses.
    pub mean_timings: StageTimings,
    /// Analyses per minute (label: `HH:MM` UTC).
    pub throughput: Vec<Count>,
    /// Refused uploads by reason.
    pub errors: Vec<Count>,
    /// The last evaluation, if one was run.
    pub eval: Option<EvalView>,
}

/// A finished evaluation as the dashboard shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalView {
    pub folder: String,
    pub mode: String,
    pub model: String,
    pub images: u64,
    pub map_at_10: f64,
    pub vote_accuracy: f64,
    /// A category head's accuracy, when one was scored (`kadr eval --head`, or the
    /// dashboard's tuning asking for the head): trained on `train/` and scored on `valid/`,
    /// or in 5-fold cross-validation.
    #[serde(default)]
    pub head_accuracy: Option<f64>,
    pub per_category: Vec<CategoryScore>,
    /// Rows: true category; columns: predicted, the last one "(none)".
    pub confusion_labels: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    /// Lowest-AP queries, worst first.
    pub worst: Vec<WorstQuery>,
    /// Every evaluated image projected on the first two principal components.
    pub map: Vec<MapPoint>,
    pub created_at: i64,
    /// How the dashboard can evaluate it again from the stored vectors when the tuning
    /// changes: `"split"` (`valid/` against `train/`) or `"loo"` (leave-one-out); empty when
    /// it cannot.
    #[serde(default)]
    pub replay: String,
    /// The query expansion it used (neighbours, 0 for none, and α), kept when evaluated again.
    #[serde(default)]
    pub qe: usize,
    #[serde(default)]
    pub qe_alpha: f32,
    /// The database-side augmentation it used (`n` 0: none), kept when evaluated again.
    #[serde(default)]
    pub dba: Expansion,
    /// The vote these figures were computed under when the dashboard evaluated the stored
    /// vectors again for its page's tuning ("k 5, weighted vote, similarity ≥ 0.30"); empty
    /// for the figures as first run.
    #[serde(default)]
    pub tuning: String,
}

/// One category's evaluation figures.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CategoryScore {
    pub category: String,
    pub images: u64,
    pub map_at_10: f64,
    pub precision: f64,
    pub recall: f64,
}

/// A query the index served badly.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorstQuery {
    pub hash: String,
    pub path: String,
    pub category: String,
    pub predicted: Option<String>,
    pub ap: f64,
}

/// An image on the 2-D embedding map.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MapPoint {
    pub x: f32,
    pub y: f32,
    pub category: String,
    pub path: String,
    /// Whether the vote gave its own category.
    pub correct: bool,
}

/// Long work the dataset page can start.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    /// Add a dataset folder (on the server) and index it.
    AddFolder { folder: String },
    /// Index every known folder again (new and changed files only).
    Reindex,
    /// Evaluate the first folder (leave-one-out, or valid against train).
    Evaluate,
}

/// Where a job stands.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Failed,
    /// The server stopped (was killed, crashed) while the job ran; what it had committed is
    /// kept, and running it again finishes it.
    Interrupted,
}

/// A job's progress.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub id: u64,
    /// What it does, in words.
    pub title: String,
    pub state: JobState,
    pub done: u64,
    pub total: u64,
    /// Outcome or error, once finished.
    pub message: String,
}

/// What `/status` answers.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServerStatus {
    pub version: String,
    pub model: String,
    pub device: String,
    pub index_size: u64,
    pub uptime_s: u64,
    pub vlm: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_round_trips_through_the_url() {
        let t = Tuning {
            threshold: 0.45,
            relative: true,
            min_confidence: 0.5,
            k: 7,
            mode: VoteMode::Weighted,
            rename: "a b=c&d".into(),
            ignore: "x".into(),
            qe: 2,
            qe_alpha: 1.5,
            dba: 5,
            dba_alpha: 1.0,
            by: Decider::Head,
        };
        let q = t.to_query();
        assert!(q.ends_with("&qe=2&qa=1.5&dba=5&da=1&by=head"), "{q}");
        let pairs: Vec<(String, String)> = q
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), decode(v))
            })
            .collect();
        let back = Tuning::from_query(
            |key| pairs.iter().find(|p| p.0 == key).map(|p| p.1.clone()),
            &Tuning::default(),
        );
        assert_eq!(back, t);
        assert!(back.validate().is_ok());
    }

    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn bad_tuning_names_the_field() {
        let bad = |t: Tuning| t.validate().unwrap_err().field;
        let d = Tuning::default;
        assert_eq!(
            bad(Tuning {
                threshold: f32::NAN,
                ..d()
            }),
            "threshold"
        );
        assert_eq!(
            bad(Tuning {
                threshold: 1.5,
                ..d()
            }),
            "threshold"
        );
        assert_eq!(bad(Tuning { k: 0, ..d() }), "k");
        assert_eq!(
            bad(Tuning {
                k: MAX_K + 1,
                ..d()
            }),
            "k"
        );
        assert_eq!(
            bad(Tuning {
                min_confidence: -0.1,
                ..d()
            }),
            "min_confidence"
        );
        assert_eq!(
            bad(Tuning {
                rename: "oops".into(),
                ..d()
            }),
            "rename"
        );
        assert_eq!(bad(Tuning { qe: 101, ..d() }), "qe");
        assert_eq!(
            bad(Tuning {
                qe: 2,
                qe_alpha: f32::INFINITY,
                ..d()
            }),
            "qe_alpha"
        );
        // Unreadable URL values fall back to the defaults instead of failing the page.
        let t = Tuning::from_query(|k| (k == "k").then(|| "many".to_string()), &d());
        assert_eq!(t.k, d().k);
        let t = Tuning::from_query(|k| (k == "by").then(|| "oracle".to_string()), &d());
        assert_eq!(t.by, Decider::Best);
        // ... while the API names them.
        assert_eq!(Tuning::check_raw("by", "oracle").unwrap_err().field, "by");
        assert_eq!(Tuning::check_raw("qe", "-1").unwrap_err().field, "qe");
        assert!(Tuning::check_raw("qa", "0.5").is_ok());
        assert_eq!(Tuning::check_raw("dba", "two").unwrap_err().field, "dba");
        assert_eq!(bad(Tuning { dba: 101, ..d() }), "dba");
        // Expansion off and the default source leave the URL as it was.
        assert_eq!(d().to_query(), "t=0.3&rel=0&conf=0&k=10&mode=majority");
    }

    #[test]
    fn the_head_decides_under_the_same_rules_and_confidence() {
        let a = Analysis {
            hash: "h".into(),
            name: "q.png".into(),
            width: 1,
            height: 1,
            hits: vec![Hit {
                hash: String::new(),
                path: String::new(),
                split: String::new(),
                category: "cat".into(),
                score: 0.9,
            }],
            text: TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: vec![],
            },
            timings: StageTimings::default(),
            created_at: 0,
            indexed_category: None,
            head: Some(HeadGuess {
                category: "dog".into(),
                probability: 0.7,
                top: vec![],
            }),
            expansion: Default::default(),
            augmentation: Default::default(),
        };
        let decide = |t: Tuning, by| {
            let cfg = t.validate().unwrap();
            let r = a.rank(&cfg);
            a.decide(&r, &cfg, by)
        };
        let d = Tuning::default;
        let vote = decide(d(), Decider::Vote);
        assert_eq!(
            (vote.category.as_deref(), vote.by),
            (Some("cat"), Decider::Vote)
        );
        let head = decide(d(), Decider::Head);
        assert_eq!(
            (head.category.as_deref(), head.confidence),
            (Some("dog"), 0.7)
        );
        let renamed = decide(
            Tuning {
                rename: "dog=pet".into(),
                ..d()
            },
            Decider::Head,
        );
        assert_eq!(renamed.category.as_deref(), Some("pet"));
        let ignored = decide(
            Tuning {
                ignore: "dog".into(),
                ..d()
            },
            Decider::Head,
        );
        assert_eq!(ignored.category, None);
        let unsure = decide(
            Tuning {
                min_confidence: 0.8,
                ..d()
            },
            Decider::Head,
        );
        assert_eq!(unsure.category, None);
        let no_head = Analysis {
            head: None,
            ..a.clone()
        };
        let cfg = d().validate().unwrap();
        assert_eq!(
            no_head
                .decide(&no_head.rank(&cfg), &cfg, Decider::Head)
                .category,
            None
        );
    }

    #[test]
    fn ranking_applies_threshold_k_and_rules() {
        let hit = |c: &str, s: f32| Hit {
            hash: String::new(),
            path: String::new(),
            split: String::new(),
            category: c.into(),
            score: s,
        };
        let a = Analysis {
            hash: "h".into(),
            name: "q.png".into(),
            width: 1,
            height: 1,
            hits: vec![
                hit("cat", 0.9),
                hit("dog", 0.5),
                hit("dog", 0.4),
                hit("dog", 0.2),
            ],
            text: TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: vec![],
            },
            timings: StageTimings::default(),
            created_at: 0,
            indexed_category: None,
            head: None,
            expansion: Default::default(),
            augmentation: Default::default(),
        };
        let at = |threshold: f32| {
            Tuning {
                threshold,
                ..Tuning::default()
            }
            .validate()
            .unwrap()
        };
        let r = a.rank(&at(0.3));
        assert_eq!(r.matches.len(), 3);
        assert_eq!(r.vote.category.as_deref(), Some("dog"));
        let r = a.rank(&at(0.6));
        assert_eq!(r.matches.len(), 1);
        assert_eq!(r.vote.category.as_deref(), Some("cat"));
        let relative = Tuning {
            threshold: 0.5,
            relative: true,
            ..Tuning::default()
        };
        assert_eq!(a.rank(&relative.validate().unwrap()).matches.len(), 2);
    }
}
