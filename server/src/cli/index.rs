//! `kadr index DIR...`: index folders incrementally (unchanged files are skipped by content
//! hash; images whose files are gone from a folder leave the index).

use super::{progress_bar, report_failures};
use anyhow::Result;
use clap::Args;
use kadr_engine::jobs::index_folder;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct IndexArgs {
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

pub fn run(s: &Settings, a: IndexArgs) -> Result<()> {
    let ws = Workspace::open(s)?;
    for dir in a.dirs {
        let (files, r) = index_folder(&ws, &dir, s.max_batch_size, &progress_bar("index"))?;
        report_failures(&r.failed);
        println!(
            "{}: {} images, {} embedded, {} reused, {} unchanged, {} removed (files gone), {} unreadable; index holds {} ({})",
            dir.display(),
            files.len(),
            r.embedded,
            r.reused,
            r.skipped,
            r.removed,
            r.failed.len(),
            ws.len(),
            ws.index_description()
        );
    }
    Ok(())
}
