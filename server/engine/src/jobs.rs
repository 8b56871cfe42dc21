//! Jobs: the long operations over a dataset folder, shared by the CLI and the server —
//! index a folder, evaluate it (or compare fusion weights on it), and write a submission for
//! its `test/` split.

use crate::dataset::{scan, LabeledFile};
use crate::eval::{evaluate, Item, Report};
use crate::expand::Expansion;
use crate::fusion::{check_weight, fuse};
use crate::submit::{predict, Prediction, Reference};
use crate::vote::VoteConfig;
use crate::workspace::{IndexReport, Workspace};
use anyhow::{bail, Result};
use std::path::Path;

/// How an evaluation pairs queries with the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalMode {
    /// `train/` and `valid/` present: valid queries train; otherwise leave-one-out.
    Auto,
    /// Every labelled image queries all the others.
    LeaveOneOut,
    /// `valid/` images query `train/` images.
    Split,
}

impl std::str::FromStr for EvalMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "loo" | "leave-one-out" => Ok(Self::LeaveOneOut),
            "split" => Ok(Self::Split),
            _ => bail!("unknown eval mode {s:?}: use auto, loo or split"),
        }
    }
}

/// Scans `dir` and indexes every image in it; `progress(done, total)` after each batch.
/// Images indexed from `dir` before whose files are gone are removed (`report.removed`).
pub fn index_folder(
    ws: &Workspace,
    dir: &Path,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<LabeledFile>, IndexReport)> {
    let (files, report) = index_folders(ws, &[dir.to_path_buf()], batch, progress)?;
    if files.is_empty() && report.removed == 0 {
        bail!(
            "no images (.jpg .jpeg .png .webp .gif .bmp) under {}",
            dir.display()
        );
    }
    Ok((files, report))
}

/// [`index_folder`] over several folders in one indexing run (one checkpoint schedule, one
/// progress count).
pub fn index_folders(
    ws: &Workspace,
    dirs: &[std::path::PathBuf],
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<LabeledFile>, IndexReport)> {
    let mut files = Vec::new();
    let mut prefixes = Vec::new();
    for dir in dirs {
        files.extend(scan(dir)?);
        prefixes.push(prefix_of(dir)?.1);
    }
    let total = files.len();
    progress(0, total);
    let mut report = ws.index_files(&files, batch, &|done| progress(done, total))?;
    // Files indexed from these folders before and deleted since leave the index.
    let present: std::collections::HashSet<String> = files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    for prefix in prefixes {
        report.removed += ws.remove_missing(&prefix, &present)?;
    }
    Ok((files, report))
}

fn relative(dir: &Path, path: &str) -> String {
    Path::new(path)
        .strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string())
}

/// The folder and the path prefix its stored images have.
fn prefix_of(dir: &Path) -> Result<(std::path::PathBuf, String)> {
    let dir = dir.canonicalize()?;
    let prefix = format!("{}{}", dir.to_string_lossy(), std::path::MAIN_SEPARATOR);
    Ok((dir, prefix))
}

fn item(dir: &Path, row: crate::store::ImageRow, embedding: Vec<f32>) -> (String, Item) {
    (
        row.split,
        Item {
            path: relative(dir, &row.path),
            category: row.category,
            embedding,
        },
    )
}

/// The stored, labelled images of `dir` (after [`index_folder`]), by split, with their
/// vectors in the workspace's space.
fn labelled(ws: &Workspace, dir: &Path) -> Result<Vec<(String, Item)>> {
    let (dir, prefix) = prefix_of(dir)?;
    Ok(ws
        .vectors_under(&prefix)?
        .into_iter()
        .map(|(row, embedding)| item(&dir, row, embedding))
        .collect())
}

/// Indexes `dir` and evaluates it.
pub fn eval_folder(
    ws: &Workspace,
    dir: &Path,
    mode: EvalMode,
    cfg: &VoteConfig,
    qe: &Expansion,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Report, IndexReport)> {
    let (_, indexed) = index_folder(ws, dir, batch, progress)?;
    let all = labelled(ws, dir)?;
    Ok((evaluate_labelled(&all, dir, mode, cfg, qe)?, indexed))
}

/// The evaluation of one space over a fused workspace's folder: the visual vectors alone
/// (`weight` `None`), or fused at `weight`.
pub struct SpaceReport {
    pub weight: Option<f32>,
    pub report: Report,
}

/// Indexes `dir` in a fused workspace and evaluates it in the visual space and fused at each
/// of `weights`, from the same stored vectors (images without a text are left out of all).
pub fn eval_fusion_folder(
    ws: &Workspace,
    dir: &Path,
    mode: EvalMode,
    cfg: &VoteConfig,
    qe: &Expansion,
    weights: &[f32],
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<SpaceReport>, IndexReport)> {
    for &w in weights {
        check_weight(w)?;
    }
    let (_, indexed) = index_folder(ws, dir, batch, progress)?;
    let (dir_abs, prefix) = prefix_of(dir)?;
    let pairs = ws.vector_pairs_under(&prefix)?;
    let mut out = Vec::with_capacity(weights.len() + 1);
    for weight in std::iter::once(None).chain(weights.iter().copied().map(Some)) {
        let all: Vec<(String, Item)> = pairs
            .iter()
            .map(|(row, v, t)| {
                let embedding = match weight {
                    None => v.clone(),
                    Some(w) => fuse(v, t, w),
                };
                item(&dir_abs, row.clone(), embedding)
            })
            .collect();
        let report = evaluate_labelled(&all, dir, mode, cfg, qe)?;
        out.push(SpaceReport { weight, report });
    }
    Ok((out, indexed))
}

/// Evaluates the labelled images of `dir` (not `test/`): `valid/` against `train/`, or
/// leave-one-out, as `mode` says.
fn evaluate_labelled(
    all: &[(String, Item)],
    dir: &Path,
    mode: EvalMode,
    cfg: &VoteConfig,
    qe: &Expansion,
) -> Result<Report> {
    let has = |s: &str| all.iter().any(|(split, _)| split == s);
    let split_mode = match mode {
        EvalMode::Auto => has("train") && has("valid"),
        EvalMode::Split => {
            if !(has("train") && has("valid")) {
                bail!(
                    "--mode split needs train/ and valid/ folders under {}",
                    dir.display()
                );
            }
            true
        }
        EvalMode::LeaveOneOut => false,
    };
    let labelled_items = |split: Option<&str>| -> Vec<Item> {
        all.iter()
            .filter(|(s, it)| {
                !it.category.is_empty() && split.is_none_or(|want| s == want) && s != "test"
            })
            .map(|(_, it)| it.clone())
            .collect()
    };
    if split_mode {
        evaluate(
            &labelled_items(Some("train")),
            Some(&labelled_items(Some("valid"))),
            cfg,
            qe,
        )
    } else {
        let items = labelled_items(None);
        let categories: std::collections::BTreeSet<&str> =
            items.iter().map(|i| i.category.as_str()).collect();
        if categories.len() < 2 {
            bail!(
                "{} needs at least two category folders to evaluate (found {})",
                dir.display(),
                categories.len()
            );
        }
        evaluate(&items, None, cfg, qe)
    }
}

/// Indexes `dir` and predicts a category for each image under `dir/test/`.
pub fn submit_folder(
    ws: &Workspace,
    dir: &Path,
    cfg: &VoteConfig,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Prediction>> {
    index_folder(ws, dir, batch, progress)?;
    let all = labelled(ws, dir)?;
    let references: Vec<Reference> = all
        .iter()
        .filter(|(s, it)| s != "test" && !it.category.is_empty())
        .map(|(_, it)| Reference {
            path: it.path.clone(),
            category: it.category.clone(),
            embedding: it.embedding.clone(),
        })
        .collect();
    let queries: Vec<(String, Vec<f32>)> = all
        .into_iter()
        .filter(|(s, _)| s == "test")
        .map(|(_, it)| (it.path, it.embedding))
        .collect();
    if queries.is_empty() {
        bail!("no images under {}/test/ to predict", dir.display());
    }
    predict(&references, &queries, cfg)
}
