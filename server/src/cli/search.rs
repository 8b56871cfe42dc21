//! `kadr search IMAGE... [--split S] [--category C] [--qe N]`: the most similar indexed images
//! (of those splits and categories, the query expanded by its N best neighbours if asked) and
//! the voted category.

use super::{ExpansionArgs, VoteArgs};
use anyhow::{Context, Result};
use clap::Args;
use kadr_engine::index::Filter;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct SearchArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    vote: VoteArgs,
    #[command(flatten)]
    qe: ExpansionArgs,
    /// Only neighbours from these splits (comma-separated: train,valid)
    #[arg(long, value_name = "SPLITS", default_value = "")]
    split: String,
    /// Only neighbours of these categories (comma-separated)
    #[arg(long, value_name = "CATEGORIES", default_value = "")]
    category: String,
    /// Print one JSON object per image instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(s: &Settings, a: SearchArgs) -> Result<()> {
    let cfg = a.vote.config()?;
    let qe = a.qe.expansion()?;
    let filter = Filter::parse(&a.split, &a.category);
    let ws = Workspace::open(s)?;
    anyhow::ensure!(
        !ws.is_empty(),
        "the index is empty: run `kadr index DIR` first"
    );
    for image in a.images {
        let bytes =
            std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
        let q = ws
            .embed_bytes(&bytes)
            .with_context(|| format!("{}", image.display()))?;
        let hits = ws.search_expanded(&q, cfg.k, &filter, &qe)?;
        let v = kadr_engine::vote::vote(hits.iter().map(|h| (h.category.as_str(), h.score)), &cfg);
        if a.json {
            let out = serde_json::json!({ "image": image, "vote": v, "neighbours": hits });
            println!("{out}");
        } else {
            println!(
                "{}: {} (confidence {:.2})",
                image.display(),
                v.category.as_deref().unwrap_or("(no category)"),
                v.confidence
            );
            for h in &hits {
                println!("  {:.4}  {:<12} {}", h.score, h.category, h.path);
            }
        }
    }
    Ok(())
}
