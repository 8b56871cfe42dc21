//! `kadr submit --data DIR`: predictions for DIR/test/ as a submission CSV.

use super::{progress_bar, VoteArgs};
use anyhow::Result;
use clap::Args;
use kadr_engine::head::Head;
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
    // A head trained for this space (`kadr train`) competes with the vote on valid/.
    let head_path = Head::path(&s.home, ws.space_id());
    let head = if head_path.is_file() {
        Some(Head::load(&head_path, ws.space_id())?)
    } else {
        None
    };
    let (preds, choice) = submit_folder(
        &ws,
        &a.data,
        &cfg,
        head.as_ref(),
        s.max_batch_size,
        &progress_bar("embed"),
    )?;
    match (choice.head_accuracy, choice.vote_accuracy) {
        (Some(h), Some(v)) => println!(
            "categories by the {}: on valid/ the head scores {h:.4}, the {}-NN vote {v:.4}",
            choice.by, cfg.k
        ),
        _ if head.is_some() => {
            println!("categories by the vote: no valid/ split to compare the head with")
        }
        _ => println!("categories by the vote (no head: `kadr train` makes one)"),
    }
    let tmp = a.out.with_extension("csv.tmp");
    kadr_engine::submit::write_csv(&preds, std::fs::File::create(&tmp)?)?;
    std::fs::rename(&tmp, &a.out)?;
    println!("wrote {} predictions to {}", preds.len(), a.out.display());
    Ok(())
}
