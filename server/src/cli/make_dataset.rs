//! `kadr make-dataset tuxpaint|fashion-mnist --out DIR`: the bundled datasets, from Debian's
//! packages.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    Tuxpaint,
    FashionMnist,
}

#[derive(Args)]
pub struct MakeDatasetArgs {
    /// Which set
    #[arg(value_enum)]
    name: Dataset,
    #[arg(long)]
    out: PathBuf,
    /// Tux Paint manifest [default: the bundled 8-category manifest]
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Images per class (fashion-mnist)
    #[arg(long, default_value_t = 1000)]
    per_class: usize,
}

pub fn run(a: MakeDatasetArgs) -> Result<()> {
    let n = match a.name {
        Dataset::Tuxpaint => {
            let manifest = match a.manifest {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => kadr_engine::dataset::TUXPAINT_MANIFEST.to_string(),
            };
            kadr_engine::dataset::build_tuxpaint(
                &manifest,
                "/usr/share/tuxpaint/stamps".as_ref(),
                &a.out,
            )?
        }
        Dataset::FashionMnist => kadr_engine::dataset::build_fashion_mnist(
            "/usr/share/datasets/fashion-mnist".as_ref(),
            "t10k",
            a.per_class,
            &a.out,
        )?,
    };
    println!("wrote {n} images to {}", a.out.display());
    Ok(())
}
