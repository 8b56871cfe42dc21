//! The subcommands, one file each, and what they share: the vote flags, the progress bar, the
//! report of unreadable files.

pub mod dupes;
pub mod eval;
pub mod import_weights;
pub mod index;
pub mod make_dataset;
pub mod search;
pub mod serve;
pub mod submit;
pub mod train;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kadr_engine::vote::{CategoryRules, VoteConfig, VoteMode};

#[derive(Args, Clone)]
pub struct VoteArgs {
    /// Neighbours that vote
    #[arg(long, short, default_value_t = kadr_engine::settings::DEFAULT_K)]
    k: usize,
    /// majority or weighted
    #[arg(long, default_value = "majority")]
    vote: VoteMode,
    /// Neighbours below this cosine similarity do not vote
    #[arg(long, default_value_t = kadr_engine::settings::DEFAULT_MIN_SIMILARITY)]
    min_similarity: f32,
    /// Neighbours below best × this do not vote (0–1)
    #[arg(long)]
    relative: Option<f32>,
    /// Below this confidence no category is given
    #[arg(long, default_value_t = 0.0)]
    min_confidence: f32,
    /// Renames/merges, e.g. "kitten=cat,puppy=dog"
    #[arg(long, default_value = "")]
    rename: String,
    /// Categories that never vote, e.g. "misc,other"
    #[arg(long, default_value = "")]
    ignore: String,
}

/// Re-ranking (query expansion, database-side augmentation), for `kadr search` and `kadr eval`.
#[derive(Args, Clone, Copy)]
pub struct RerankArgs {
    /// Query expansion: average each query with its N best neighbours, then search again
    /// (0: off)
    #[arg(long, value_name = "N", default_value_t = 0)]
    qe: usize,
    /// Query expansion: each neighbour weighs its similarity to this power
    #[arg(long, value_name = "ALPHA", default_value_t = kadr_engine::expand::DEFAULT_ALPHA)]
    qe_alpha: f32,
    /// Database-side augmentation: each indexed image averaged with its N nearest other
    /// indexed images before the queries search them (0: off; in a leave-one-out evaluation
    /// each query is kept out)
    #[arg(long, value_name = "N", default_value_t = 0)]
    dba: usize,
    /// Database-side augmentation: each neighbour weighs its similarity to this power
    #[arg(long, value_name = "ALPHA", default_value_t = kadr_engine::expand::DEFAULT_ALPHA)]
    dba_alpha: f32,
}

impl RerankArgs {
    /// The re-ranking asked for; an error names the flag out of bounds.
    pub fn rerank(&self) -> Result<kadr_engine::expand::Rerank> {
        use kadr_engine::expand::Expansion;
        let rr = kadr_engine::expand::Rerank {
            qe: Expansion {
                n: self.qe,
                alpha: self.qe_alpha,
            },
            dba: Expansion {
                n: self.dba,
                alpha: self.dba_alpha,
            },
        };
        rr.validate()
            .map_err(|(field, why)| anyhow::anyhow!("--{}: {why}", field.replace('_', "-")))?;
        Ok(rr)
    }
}

impl VoteArgs {
    pub fn config(&self) -> Result<VoteConfig> {
        anyhow::ensure!(self.k > 0, "--k must be at least 1");
        anyhow::ensure!(
            (-1.0..=1.0).contains(&self.min_similarity),
            "--min-similarity must be within -1..1"
        );
        if let Some(r) = self.relative {
            anyhow::ensure!((0.0..=1.0).contains(&r), "--relative must be within 0..1");
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_confidence),
            "--min-confidence must be within 0..1"
        );
        Ok(VoteConfig {
            k: self.k,
            mode: self.vote,
            min_similarity: self.min_similarity,
            relative_to_best: self.relative,
            min_confidence: self.min_confidence,
            rules: CategoryRules::parse(&self.rename, &self.ignore).map_err(anyhow::Error::msg)?,
        })
    }
}

pub fn progress_bar(what: &'static str) -> impl Fn(usize, usize) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what);
    move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    }
}

pub fn report_failures(failed: &[(String, String)]) {
    for (path, why) in failed.iter().take(20) {
        eprintln!("skipped {path}: {why}");
    }
    if failed.len() > 20 {
        eprintln!("… and {} more unreadable files", failed.len() - 20);
    }
}
