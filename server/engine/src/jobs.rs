//! Jobs: the long operations over a dataset folder, shared by the CLI and the server —
//! index a folder, evaluate it (or compare fusion weights on it), and write a submission for
//! its `test/` split.

use crate::dataset::{scan, LabeledFile};
use crate::eval::{evaluate, evaluate_with, Item, Report};
use crate::expand::Expansion;
use crate::fusion::{check_weight, fuse};
use crate::head::{cross_validate, Head, HeadConfig};
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

/// Indexes `dirs` and finds the duplicates among their images (exact, and near at
/// `threshold`): names are relative to their folder, prefixed with the folder when there are
/// several.
pub fn dupes_folders(
    ws: &Workspace,
    dirs: &[std::path::PathBuf],
    threshold: f32,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(crate::dupes::DupesReport, IndexReport)> {
    let (files, indexed) = index_folders(ws, dirs, batch, progress)?;
    if files.is_empty() {
        bail!("no images (.jpg .jpeg .png .webp .gif .bmp) under the folders given");
    }
    let mut rows = Vec::new();
    for dir in dirs {
        let (abs, prefix) = prefix_of(dir)?;
        let shown = if dirs.len() > 1 {
            format!("{}/", dir.display())
        } else {
            String::new()
        };
        for (row, v) in ws.vectors_under(&prefix)? {
            let name = format!("{shown}{}", relative(&abs, &row.path));
            rows.push((name, row, v));
        }
    }
    Ok((crate::dupes::find_stored(&rows, threshold)?, indexed))
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
    opts: &EvalOptions,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Report, IndexReport)> {
    let (_, indexed) = index_folder(ws, dir, batch, progress)?;
    let all = labelled(ws, dir)?;
    Ok((evaluate_labelled(&all, dir, mode, opts)?, indexed))
}

/// Evaluates the images of `dir` stored before, without indexing or embedding anything: what
/// the dashboard does when the tuning changes.
pub fn evaluate_stored(
    ws: &Workspace,
    dir: &Path,
    mode: EvalMode,
    opts: &EvalOptions,
) -> Result<Report> {
    let all = labelled(ws, dir)?;
    if all.is_empty() {
        bail!("nothing stored under {}: index it first", dir.display());
    }
    evaluate_labelled(&all, dir, mode, opts)
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
    opts: &EvalOptions,
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
        let report = evaluate_labelled(&all, dir, mode, opts)?;
        out.push(SpaceReport { weight, report });
    }
    Ok((out, indexed))
}

/// Folds of the cross-validation that scores a head on a set without splits.
pub const CV_FOLDS: usize = 5;

/// How an evaluation votes, and what it measures besides the neighbours' vote.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    pub vote: VoteConfig,
    /// Query expansion before the search.
    pub qe: Expansion,
    /// Database-side augmentation of the indexed images before they are searched.
    pub dba: Expansion,
    /// Also train a head (on `train/`, scored on `valid/`; or in cross-validation) and
    /// report its accuracy.
    pub head: Option<HeadConfig>,
}

fn examples(items: &[Item]) -> Vec<crate::head::Example<'_>> {
    items
        .iter()
        .map(|i| (i.embedding.as_slice(), i.category.as_str()))
        .collect()
}

/// Evaluates the labelled images of `dir` (not `test/`): `valid/` against `train/`, or
/// leave-one-out, as `mode` says.
fn evaluate_labelled(
    all: &[(String, Item)],
    dir: &Path,
    mode: EvalMode,
    opts: &EvalOptions,
) -> Result<Report> {
    let cfg = &opts.vote;
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
        let (train, valid) = (labelled_items(Some("train")), labelled_items(Some("valid")));
        let mut report = evaluate_with(&train, Some(&valid), cfg, &opts.qe, &opts.dba)?;
        if let Some(h) = &opts.head {
            // valid/ stays unseen: the head stops early on a part of train/.
            let (head, _) = Head::train_held_out("eval", &examples(&train), h)?;
            report.head_accuracy = Some(head.accuracy(&examples(&valid))?);
        }
        Ok(report)
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
        let mut report = evaluate_with(&items, None, cfg, &opts.qe, &opts.dba)?;
        if let Some(h) = &opts.head {
            report.head_accuracy = Some(cross_validate(&examples(&items), CV_FOLDS, h)?);
        }
        Ok(report)
    }
}

/// What `kadr train` did: the head's training and, with a `valid/` split, how it compares
/// with the neighbours' vote there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    #[serde(flatten)]
    pub report: crate::head::TrainReport,
    /// The k-NN vote's accuracy on `valid/` against `train/`.
    pub vote_accuracy: Option<f64>,
    pub space: String,
    pub path: std::path::PathBuf,
}

/// Indexes `dir` and trains a category head on its labelled vectors: `train/` (or every
/// labelled image outside `test/` when there is no `train/`), stopping early and calibrating
/// on `valid/` when there is one, else on a tenth of the training images held out
/// ([`Head::train_held_out`]); saves it in `home` under the workspace's space.
pub fn train_folder(
    ws: &Workspace,
    dir: &Path,
    home: &Path,
    cfg: &HeadConfig,
    vote: &VoteConfig,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<TrainSummary> {
    index_folder(ws, dir, batch, progress)?;
    let all = labelled(ws, dir)?;
    let pick = |f: &dyn Fn(&str) -> bool| -> Vec<Item> {
        all.iter()
            .filter(|(s, it)| !it.category.is_empty() && f(s))
            .map(|(_, it)| it.clone())
            .collect()
    };
    let has_train = all.iter().any(|(s, _)| s == "train");
    let train = pick(&|s| {
        if has_train {
            s == "train"
        } else {
            s != "test" && s != "valid"
        }
    });
    let valid = pick(&|s| s == "valid");
    if train.is_empty() {
        bail!("no labelled images to train on under {}", dir.display());
    }
    let space = ws.space_id().to_string();
    // Without valid/, a tenth of train/ is held out to stop early and calibrate on.
    let (head, report) = if valid.is_empty() {
        Head::train_held_out(&space, &examples(&train), cfg)?
    } else {
        Head::train(&space, &examples(&train), Some(&examples(&valid)), cfg)?
    };
    let vote_accuracy = if valid.is_empty() {
        None
    } else {
        Some(evaluate(&train, Some(&valid), vote, &Expansion::off())?.vote_accuracy)
    };
    let path = Head::path(home, &space);
    head.save(&path)?;
    Ok(TrainSummary {
        report,
        vote_accuracy,
        space,
        path,
    })
}

/// The head against the vote on the `valid/` images of `all` (searched against `train/`):
/// the head is chosen when it is the more accurate (it was calibrated on `valid/`, so the
/// comparison leans its way a little); the vote without a head or without both splits.
fn choose(all: &[(String, Item)], cfg: &VoteConfig, head: Option<&Head>) -> Result<SubmitChoice> {
    let mut choice = SubmitChoice {
        by: "vote",
        head_accuracy: None,
        vote_accuracy: None,
    };
    let split = |want: &str| -> Vec<Item> {
        all.iter()
            .filter(|(s, it)| s == want && !it.category.is_empty())
            .map(|(_, it)| it.clone())
            .collect()
    };
    let (train, valid) = (split("train"), split("valid"));
    if let (Some(head), false, false) = (head, train.is_empty(), valid.is_empty()) {
        let h = head.accuracy(&examples(&valid))?;
        let v = evaluate(&train, Some(&valid), cfg, &Expansion::off())?.vote_accuracy;
        choice.head_accuracy = Some(h);
        choice.vote_accuracy = Some(v);
        if h > v {
            choice.by = "head";
        }
    }
    Ok(choice)
}

/// [`choose`] over what is stored of the folders `dirs` (nothing is indexed or embedded):
/// what the web app's "best" category source resolves to.
pub fn choose_stored(
    ws: &Workspace,
    dirs: &[std::path::PathBuf],
    cfg: &VoteConfig,
    head: Option<&Head>,
) -> Result<SubmitChoice> {
    let mut all = Vec::new();
    for d in dirs {
        all.extend(labelled(ws, d)?);
    }
    choose(&all, cfg, head)
}

/// Which predictor a submission's categories come from, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubmitChoice {
    /// `"vote"` or `"head"`.
    pub by: &'static str,
    /// Accuracies on `valid/` (against `train/`), when there is a head and a `valid/` split.
    pub head_accuracy: Option<f64>,
    pub vote_accuracy: Option<f64>,
}

/// Indexes `dir` and predicts a category for each image under `dir/test/`: by the
/// neighbours' vote, or by `head` when there is one and it is the more accurate of the two
/// on `valid/` (which it was calibrated on, so the comparison leans its way a little).
pub fn submit_folder(
    ws: &Workspace,
    dir: &Path,
    cfg: &VoteConfig,
    head: Option<&Head>,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<Prediction>, SubmitChoice)> {
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
        .iter()
        .filter(|(s, _)| s == "test")
        .map(|(_, it)| (it.path.clone(), it.embedding.clone()))
        .collect();
    if queries.is_empty() {
        bail!("no images under {}/test/ to predict", dir.display());
    }
    let mut preds = predict(&references, &queries, cfg)?;
    let choice = choose(&all, cfg, head)?;
    if let (Some(head), "head") = (head, choice.by) {
        let rows: Vec<&[f32]> = queries.iter().map(|(_, v)| v.as_slice()).collect();
        for (p, h) in preds.iter_mut().zip(head.predict(&rows)?) {
            p.category = Some(h.category);
            p.confidence = h.probability;
        }
    }
    Ok((preds, choice))
}
