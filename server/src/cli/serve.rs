//! `kadr serve [DIR...]`: index the folders, then serve the web app and the API.

use super::{progress_bar, report_failures};
use anyhow::Result;
use clap::Args;
use kadr_engine::jobs::index_folder;
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Folders to index before serving
    dirs: Vec<PathBuf>,
}

pub fn run(s: &Settings, a: ServeArgs) -> Result<()> {
    let ws = Workspace::open(s)?;
    for dir in &a.dirs {
        let (files, r) = index_folder(&ws, dir, s.max_batch_size, &progress_bar("index"))?;
        report_failures(&r.failed);
        eprintln!("indexed {}: {} images", dir.display(), files.len());
    }
    let backend = kadr::backend::EngineBackend::new(ws, s, a.dirs)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(kadr::web::serve(s.addr, s.site_root.clone(), backend, s))?;
    Ok(())
}
