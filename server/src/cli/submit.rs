//! `kadr submit --data DIR`: predictions for DIR/test/ as a submission CSV.

use super::{progress_bar, VoteArgs};
use anyhow::Result;
use clap::Args;
use kadr_engine::jobs::submit_folder;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct SubmitArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "submission.csv")]
    out: PathBuf,
    #[command(flatten)]
    vote: VoteArgs,
}

pub fn run(s: &Settings, a: SubmitArgs) -> Result<()> {
    let cfg = a.vote.config()?;
    let ws = Workspace::open(s)?;
    let preds = submit_folder(&ws, &a.data, &cfg, s.max_batch_size, &progress_bar("embed"))?;
    let tmp = a.out.with_extension("csv.tmp");
    kadr_engine::submit::write_csv(&preds, std::fs::File::create(&tmp)?)?;
    std::fs::rename(&tmp, &a.out)?;
    println!("wrote {} predictions to {}", preds.len(), a.out.display());
    Ok(())
}
