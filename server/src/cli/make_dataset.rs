//! `kadr make-dataset tuxpaint|fashion-mnist --out DIR`: the bundled datasets, from Debian's
//! packages (Fashion-MNIST also as `train/` and `valid/` splits).

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
    /// fashion-mnist with splits: OUT/train/ gets --per-class images per class from the
    /// training file and OUT/valid/ this many per class from the test file (0: one folder of
    /// test-file images, no splits)
    #[arg(long, default_value_t = 0)]
    valid_per_class: usize,
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
        Dataset::FashionMnist => {
            let src: &std::path::Path = "/usr/share/datasets/fashion-mnist".as_ref();
            let build = kadr_engine::dataset::build_fashion_mnist;
            if a.valid_per_class == 0 {
                build(src, "t10k", a.per_class, &a.out)?
            } else {
                build(src, "train", a.per_class, &a.out.join("train"))?
                    + build(src, "t10k", a.valid_per_class, &a.out.join("valid"))?
            }
        }
    };
    println!("wrote {n} images to {}", a.out.display());
    Ok(())
}
