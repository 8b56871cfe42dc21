//! `kadr dupes DIR...`: exact and near duplicates among the images of the folders, and those
//! that leak across splits or categories. With `--json` the last line printed is one object
//! with `pairs: [{a, b, kind, similarity, leakage}]`.

use super::{progress_bar, report_failures};
use anyhow::Result;
use clap::Args;
use kadr_engine::dupes::{valid_threshold, Leak, DEFAULT_NEAR_SIMILARITY};
use kadr_engine::jobs::dupes_folders;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct DupesArgs {
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Cosine similarity at or above which two different files are near copies
    #[arg(long, default_value_t = DEFAULT_NEAR_SIMILARITY)]
    threshold: f32,
    /// Print the pairs as one JSON object (the last line)
    #[arg(long)]
    json: bool,
}

pub fn run(s: &Settings, a: DupesArgs) -> Result<()> {
    anyhow::ensure!(
        valid_threshold(a.threshold),
        "--threshold must be within 0..1"
    );
    let ws = Workspace::open(s)?;
    let (r, indexed) = dupes_folders(
        &ws,
        &a.dirs,
        a.threshold,
        s.max_batch_size,
        &progress_bar("index"),
    )?;
    report_failures(&indexed.failed);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    for p in &r.pairs {
        let kind = p.kind.as_str();
        let leaks: Vec<&str> = p
            .leakage
            .iter()
            .map(|l| match l {
                Leak::Split => "LEAK: two splits",
                Leak::Category => "LEAK: two categories",
            })
            .collect();
        println!(
            "{kind:<5} {:.4}  {}  {}{}{}",
            p.similarity,
            p.a,
            p.b,
            if leaks.is_empty() { "" } else { "  " },
            leaks.join(", ")
        );
    }
    println!(
        "{} images: {} exact and {} near duplicate pairs (similarity ≥ {}); {} pairs span two \
         splits, {} two categories",
        r.images, r.exact, r.near, r.threshold, r.split_leaks, r.category_leaks
    );
    Ok(())
}
