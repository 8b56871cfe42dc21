//! `kadr eval --data DIR [--fusion]`: MAP@10, vote accuracy, per-category precision/recall,
//! for one space or the visual space against fused ones; the last line printed is JSON.

use super::{progress_bar, report_failures, RerankArgs, VoteArgs};
use anyhow::Result;
use clap::Args;
use kadr_engine::fusion::EmbeddingKind;
use kadr_engine::head::HeadConfig;
use kadr_engine::jobs::{eval_folder, eval_fusion_folder, EvalMode, EvalOptions};
use kadr_engine::settings::Settings;
use kadr_engine::workspace::Workspace;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// Dataset folder: category subfolders (leave-one-out) or train/ + valid/
    #[arg(long)]
    data: PathBuf,
    /// auto, loo or split
    #[arg(long, default_value = "auto")]
    mode: EvalMode,
    #[command(flatten)]
    vote: VoteArgs,
    #[command(flatten)]
    rerank: RerankArgs,
    /// Also train a category head on the embeddings and report its accuracy (on valid/, or
    /// in 5-fold cross-validation for a set without splits)
    #[arg(long)]
    head: bool,
    /// Write the full report (per category, confusion matrix, worst queries) as JSON
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write one row per query as CSV
    #[arg(long)]
    csv_out: Option<PathBuf>,
    /// Compare the visual space with fused ones at each of --weights (and FUSION_WEIGHT)
    #[arg(long)]
    fusion: bool,
    /// Fusion weights (visual share) for --fusion, comma-separated
    #[arg(long, default_value = kadr_engine::settings::DEFAULT_FUSION_SWEEP, value_delimiter = ',')]
    weights: Vec<f32>,
}

pub fn run(mut s: Settings, a: EvalArgs) -> Result<()> {
    let cfg = a.vote.config()?;
    let kadr_engine::expand::Rerank { qe, dba } = a.rerank.rerank()?;
    let opts = EvalOptions {
        vote: cfg,
        qe,
        dba,
        head: a.head.then(HeadConfig::default),
    };
    let batch = s.max_batch_size;
    if a.fusion {
        anyhow::ensure!(
            a.json_out.is_none() && a.csv_out.is_none(),
            "--json-out and --csv-out describe one space: use them without --fusion \
             (EMBEDDING=fused evaluates the fused space at FUSION_WEIGHT)"
        );
        s.embedding = EmbeddingKind::Fused;
        let ws = Workspace::open(&s)?;
        let mut weights = a.weights;
        weights.push(s.fusion_weight);
        weights.sort_by(f32::total_cmp);
        weights.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
        let (spaces, indexed) = eval_fusion_folder(
            &ws,
            &a.data,
            a.mode,
            &opts,
            &weights,
            batch,
            &progress_bar("embed"),
        )?;
        report_failures(&indexed.failed);
        // The dashboard shows the space this workspace searches: fused at FUSION_WEIGHT.
        if let Some(sp) = spaces.iter().find(|sp| {
            sp.weight
                .is_some_and(|w| (w - s.fusion_weight).abs() < 1e-6)
        }) {
            save_for_dashboard(&s, &ws, &a.data, &sp.report, &opts)?;
        }
        print_fusion_sweep(&ws, &spaces, s.fusion_weight, &opts);
        return Ok(());
    }
    let ws = Workspace::open(&s)?;
    let (report, indexed) =
        eval_folder(&ws, &a.data, a.mode, &opts, batch, &progress_bar("embed"))?;
    report_failures(&indexed.failed);
    save_for_dashboard(&s, &ws, &a.data, &report, &opts)?;
    println!(
        "model: {}  mode: {}  k: {}{}",
        ws.space_id(),
        report.mode,
        report.k,
        rerank_note(&opts)
    );
    println!(
        "{:<16} {:>6} {:>8} {:>9} {:>7}",
        "category", "images", "MAP@10", "precision", "recall"
    );
    for c in &report.per_category {
        println!(
            "{:<16} {:>6} {:>8.3} {:>9.3} {:>7.3}",
            c.category, c.images, c.map_at_k, c.precision, c.recall
        );
    }
    if let Some(h) = report.head_accuracy {
        println!(
            "head accuracy {h:.4}, {}-NN vote accuracy {:.4}",
            report.k, report.vote_accuracy
        );
    }
    if let Some(p) = a.json_out {
        std::fs::write(&p, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = a.csv_out {
        kadr_engine::eval::write_csv(&report, std::fs::File::create(&p)?)?;
    }
    let summary = serde_json::json!({
        "map_at_10": report.map_at_10,
        "vote_accuracy": report.vote_accuracy,
        "head_accuracy": report.head_accuracy,
        "images": report.images,
        "queries": report.queries,
        "mode": report.mode,
        "k": report.k,
        "qe": qe.n,
        "qe_alpha": qe.alpha,
        "dba": dba.n,
        "dba_alpha": dba.alpha,
        "model": ws.space_id(),
    });
    println!("{summary}");
    Ok(())
}

/// Prints `kadr eval --fusion`: one line per space, the best fused weight marked, and a JSON
/// summary as the last line.
/// Keeps the evaluation as the last one, which the web app's dashboard shows.
fn save_for_dashboard(
    s: &Settings,
    ws: &Workspace,
    data: &std::path::Path,
    report: &kadr_engine::eval::Report,
    opts: &EvalOptions,
) -> Result<()> {
    use kadr::backend::dashboard::{eval_view, save_eval};
    let mut view = eval_view(ws, &data.canonicalize()?, report)?;
    let (qe, dba) = (&opts.qe, &opts.dba);
    if !qe.is_off() {
        view.mode = format!("{}, query expansion {} (α {})", view.mode, qe.n, qe.alpha);
        view.qe = qe.n;
        view.qe_alpha = qe.alpha;
    }
    if !dba.is_off() {
        view.mode = format!(
            "{}, database augmentation {} (α {})",
            view.mode, dba.n, dba.alpha
        );
        view.dba = *dba;
    }
    view.mode.push_str(", kadr eval");
    save_eval(&s.home, &view)
}

/// `  query expansion: N neighbours, α A` and `  database augmentation: …` for those on.
fn rerank_note(opts: &EvalOptions) -> String {
    let mut s = String::new();
    for (what, e) in [
        ("query expansion", &opts.qe),
        ("database augmentation", &opts.dba),
    ] {
        if !e.is_off() {
            s.push_str(&format!("  {what}: {} neighbours, α {}", e.n, e.alpha));
        }
    }
    s
}

fn print_fusion_sweep(
    ws: &Workspace,
    spaces: &[kadr_engine::jobs::SpaceReport],
    weight: f32,
    opts: &EvalOptions,
) {
    let qe = &opts.qe;
    let Some(first) = spaces.first() else {
        return;
    };
    let best = spaces
        .iter()
        .filter(|sp| sp.weight.is_some())
        .max_by(|a, b| a.report.map_at_10.total_cmp(&b.report.map_at_10))
        .and_then(|sp| sp.weight);
    let text_model = ws.fusion().map(|f| f.text.model_id()).unwrap_or_default();
    println!(
        "visual: {}  text: {}  mode: {}  k: {}  images: {}{}",
        ws.embedder().model_id(),
        text_model,
        first.report.mode,
        first.report.k,
        first.report.images,
        rerank_note(opts)
    );
    println!("{:<14} {:>8} {:>9}", "space", "MAP@10", "vote acc");
    for sp in spaces {
        let name = match sp.weight {
            None => "visual".to_string(),
            Some(w) => format!("fused w={w:.2}"),
        };
        let mut marks = Vec::new();
        if sp.weight.is_some() && sp.weight == best {
            marks.push("best");
        }
        if sp.weight.is_some_and(|w| (w - weight).abs() < 1e-6) {
            marks.push("FUSION_WEIGHT");
        }
        println!(
            "{name:<14} {:>8.4} {:>9.4}  {}",
            sp.report.map_at_10,
            sp.report.vote_accuracy,
            marks.join(", ")
        );
    }
    // Weights are f32: round them so the JSON says 0.7, not 0.699999988.
    let round = |w: f32| (w as f64 * 1e4).round() / 1e4;
    let figures = |sp: &kadr_engine::jobs::SpaceReport| {
        serde_json::json!({
            "weight": sp.weight.map(round),
            "map_at_10": sp.report.map_at_10,
            "vote_accuracy": sp.report.vote_accuracy,
            "head_accuracy": sp.report.head_accuracy,
        })
    };
    let summary = serde_json::json!({
        "visual": figures(first),
        "fused": spaces.iter().filter(|sp| sp.weight.is_some()).map(figures).collect::<Vec<_>>(),
        "best_weight": best.map(round),
        "fusion_weight": round(weight),
        "images": first.report.images,
        "queries": first.report.queries,
        "mode": first.report.mode,
        "k": first.report.k,
        "qe": qe.n,
        "qe_alpha": qe.alpha,
        "dba": opts.dba.n,
        "dba_alpha": opts.dba.alpha,
        "model": ws.embedder().model_id(),
        "text_model": text_model,
    });
    println!("{summary}");
}
