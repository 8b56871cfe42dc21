//! `kadr train --data DIR`: a category head (softmax regression) over the stored embeddings
//! of DIR, saved in the workspace for its embedding space; the last line printed is JSON.

use super::{progress_bar, VoteArgs};
use anyhow::Result;
use clap::Args;
use kadr_engine::head::HeadConfig;
use kadr_engine::jobs::train_folder;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset folder: category subfolders, optionally under train/ valid/ test/
    #[arg(long)]
    data: PathBuf,
    /// Optimiser steps at most (full batch)
    #[arg(long, default_value_t = HeadConfig::default().steps)]
    steps: usize,
    /// AdamW learning rate
    #[arg(long, default_value_t = HeadConfig::default().learning_rate)]
    learning_rate: f64,
    /// AdamW weight decay
    #[arg(long, default_value_t = HeadConfig::default().weight_decay)]
    weight_decay: f64,
    /// The vote the head is compared with on valid/
    #[command(flatten)]
    vote: VoteArgs,
}

pub fn run(s: &Settings, a: TrainArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=100_000).contains(&a.steps),
        "--steps must be within 1..100000"
    );
    anyhow::ensure!(
        a.learning_rate.is_finite() && a.learning_rate > 0.0 && a.learning_rate <= 10.0,
        "--learning-rate must be within 0..10"
    );
    anyhow::ensure!(
        a.weight_decay.is_finite() && (0.0..=10.0).contains(&a.weight_decay),
        "--weight-decay must be within 0..10"
    );
    let cfg = HeadConfig {
        steps: a.steps,
        learning_rate: a.learning_rate,
        weight_decay: a.weight_decay,
        ..HeadConfig::default()
    };
    let vote = a.vote.config()?;
    let ws = Workspace::open(s)?;
    let t = train_folder(
        &ws,
        &a.data,
        &s.home,
        &cfg,
        &vote,
        s.max_batch_size,
        &progress_bar("embed"),
    )?;
    let r = &t.report;
    println!(
        "head for {}: {} images, {} categories, {} steps, train accuracy {:.4}",
        t.space, r.examples, r.categories, r.steps, r.train_accuracy
    );
    match (r.valid_accuracy, t.vote_accuracy) {
        (Some(h), Some(v)) => println!(
            "valid/: head accuracy {h:.4}, {}-NN vote accuracy {v:.4}: the {} is better here \
             (temperature {:.3})",
            vote.k,
            if h > v { "head" } else { "vote" },
            r.temperature
        ),
        (Some(h), None) => println!(
            "no valid/ split: stopped early and calibrated (temperature {:.3}) on every tenth \
             image of each category, held out of training, where the head scores {h:.4}",
            r.temperature
        ),
        _ => println!(
            "no valid/ split and too few images to hold some out: trained {} steps, not \
             calibrated",
            r.steps
        ),
    }
    println!("saved {}", t.path.display());
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}
