//! `kadr search IMAGE... [--split S] [--category C] [--qe N] [--dba N]`: the most similar
//! indexed images (of those splits and categories, the query expanded by its N best neighbours
//! and the indexed images augmented by theirs if asked) and the voted category.
//!
//! `kadr search --text SENTENCE [IMAGE...]`: the indexed images whose texts are most like the
//! sentence, or, with images, most like each image fused with the sentence.

use super::{RerankArgs, VoteArgs};
use anyhow::{Context, Result};
use clap::Args;
use kadr_engine::index::Filter;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::{TextQuery, Workspace};
use std::path::PathBuf;

#[derive(Args)]
pub struct SearchArgs {
    /// Query images (with --text: example images, each fused with the text)
    #[arg(required_unless_present = "text")]
    images: Vec<PathBuf>,
    /// Search by text: the images whose texts (their backbone labels) are most like this
    /// sentence, embedded by the text model
    #[arg(long, value_name = "SENTENCE")]
    text: Option<String>,
    #[command(flatten)]
    vote: VoteArgs,
    #[command(flatten)]
    rerank: RerankArgs,
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
    let rr = a.rerank.rerank()?;
    let filter = Filter::parse(&a.split, &a.category);
    let ws = Workspace::open(s)?;
    anyhow::ensure!(
        !ws.is_empty(),
        "the index is empty: run `kadr index DIR` first"
    );
    let queries: Vec<Option<PathBuf>> = if a.images.is_empty() {
        vec![None]
    } else {
        a.images.into_iter().map(Some).collect()
    };
    for image in queries {
        let name = match (&image, &a.text) {
            (Some(p), None) => p.display().to_string(),
            (Some(p), Some(t)) => format!("{} + {t:?}", p.display()),
            (None, t) => format!("{:?}", t.as_deref().unwrap_or_default()),
        };
        let hits = match &a.text {
            None => {
                let image = image.as_ref().context("no image")?;
                let q = ws
                    .embed_bytes(&read(image)?)
                    .with_context(|| format!("{}", image.display()))?;
                ws.search_reranked(&q, cfg.k, &filter, &rr)?
            }
            Some(text) => {
                anyhow::ensure!(
                    rr.qe.is_off() && rr.dba.is_off(),
                    "--qe and --dba are for image searches, not --text"
                );
                let example = match &image {
                    Some(p) => Some(
                        ws.embed_visual_bytes(&read(p)?)
                            .with_context(|| format!("{}", p.display()))?,
                    ),
                    None => None,
                };
                let q = TextQuery {
                    text: text.clone(),
                    image: example,
                };
                ws.search_text(&q, cfg.k, &filter)?
            }
        };
        let v = kadr_engine::vote::vote(hits.iter().map(|h| (h.category.as_str(), h.score)), &cfg);
        if a.json {
            let out = serde_json::json!({
                "image": image, "text": a.text, "vote": v, "neighbours": hits
            });
            println!("{out}");
        } else {
            println!(
                "{name}: {} (confidence {:.2})",
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

fn read(image: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(image).with_context(|| format!("reading {}", image.display()))
}
