//! kadr web app: the HTML shell, the router, and one module per user-facing feature.
//!
//! The same crate is compiled twice: with `ssr` into the server (server functions run there,
//! against the [`backend::Backend`] the server provides as context), and with `hydrate` to
//! WASM for the browser. Types shared by both sides (and with the engine) come from the `kadr-types` crate as
//! [`types`], [`vote`] and [`dupes`]; nothing here touches the engine directly.
//!
//! Feature slices, in the order a user meets them: [`analyse`] (upload, tune, results, export),
//! [`dashboard`] (statistics and evaluation charts), [`dataset`] (what is indexed, jobs).
//! Server functions are mounted under `/api/v1/`, so they are the REST API as well.

pub mod analyse;
pub mod charts;
pub mod dashboard;
pub mod dataset;
pub mod errors;
pub mod search;
pub mod tuning;
/// The data and vote shared with the engine (crate `kadr-types`).
pub use kadr_types::{dupes, expand, types, vote};

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{Route, Router, Routes, A},
    path, SsrMode,
};

/// `s` as HTML text or attribute value: `&`, `<`, `>`, `"` and `'` as entities. For the few
/// places where the server writes HTML itself (`<title>`, the sign-in page); views escape
/// their text on their own.
#[cfg(feature = "ssr")]
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the web app needs from the engine; the server implements it and provides it as context.
/// Methods block (they embed and search): server functions call them through [`blocking`].
#[cfg(feature = "ssr")]
pub mod backend {
    use crate::analyse::FileOutcome;
    use crate::errors::ApiError;
    use crate::types::*;
    use crate::vote::VoteConfig;
    use kadr_types::dupes::DupesReport;
    use kadr_types::expand::Rerank;
    pub use kadr_types::filter::Filter;

    /// A place in the embedding queue (see [`Backend::admit`]), freed when dropped.
    pub type QueueSlot = Box<dyn Send + Sync>;

    /// The engine as seen from server functions.
    pub trait Backend: Send + Sync + 'static {
        /// Defaults for the tuning controls and the upload.
        fn defaults(&self) -> UiDefaults;
        /// What the index holds.
        fn summary(&self) -> Result<IndexSummary, ApiError>;
        /// Analyses the files of one upload (cached by content hash), in order: their images
        /// share forward passes. A file already refused (too large, bad name...) is recorded
        /// and answered with its error.
        fn analyse_files(
            &self,
            files: Vec<(String, Result<Vec<u8>, ApiError>)>,
        ) -> Vec<FileOutcome>;
        /// Waits for a place in the bounded queue of embedding work: at most a few requests
        /// embed at once and a bounded number wait; beyond that, or after waiting too long,
        /// 503. The place is held until the slot is dropped.
        fn admit(
            &self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<QueueSlot, ApiError>> + Send + '_>,
        >;
        /// The analysis of content `hash`: an upload analysed before, or an indexed image;
        /// its hits are the indexed images `filter` lets through.
        /// The search is re-ranked by `rr` (query expansion, database-side augmentation).
        fn analysis(&self, hash: &str, filter: &Filter, rr: &Rerank) -> Result<Analysis, ApiError>;
        /// The analysis of content `hash` if one is stored (a search, no embedding).
        fn cached_analysis(
            &self,
            hash: &str,
            filter: &Filter,
            rr: &Rerank,
        ) -> Result<Option<Analysis>, ApiError>;
        /// Dashboard figures under a tuning (`cfg`: its vote, validated).
        fn stats(&self, tuning: &Tuning, cfg: &VoteConfig) -> Result<Stats, ApiError>;
        /// What the "best" category source is under `cfg`: the head or the vote.
        fn choice(&self, cfg: &VoteConfig) -> Result<CategoryChoice, ApiError>;
        /// Exact and near (at `threshold`) duplicates among the served folders' images, the
        /// first `limit` pairs.
        fn dupes(&self, threshold: f32, limit: usize) -> Result<DupesReport, ApiError>;
        /// The `k` indexed images `filter` lets through whose texts are most like `text`,
        /// fused with the image of content `hash` (an upload or an indexed image) when given.
        fn search_text(
            &self,
            text: &str,
            hash: Option<&str>,
            k: usize,
            filter: &Filter,
        ) -> Result<TextSearch, ApiError>;
        /// Starts a background job.
        fn start_job(&self, req: JobRequest) -> Result<JobStatus, ApiError>;
        /// One job's progress.
        fn job(&self, id: u64) -> Result<JobStatus, ApiError>;
        /// Every job since the server started, newest first.
        fn jobs(&self) -> Vec<JobStatus>;
    }

    /// The backend the server provided as context.
    pub fn backend() -> Result<std::sync::Arc<dyn Backend>, ApiError> {
        leptos::prelude::use_context::<std::sync::Arc<dyn Backend>>()
            .ok_or_else(|| ApiError::internal("no backend: the server did not provide one"))
    }

    /// Runs `f` with the backend on tokio's blocking pool, so embedding never stalls the
    /// async workers that serve other requests.
    pub async fn blocking<T: Send + 'static>(
        f: impl FnOnce(&dyn Backend) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let backend = backend()?;
        let result = tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("the engine failed: {e}")))?;
        // The blocking thread has no response to set the status on; this task does.
        if let Err(e) = &result {
            e.set_response_status();
        }
        result
    }
}

/// The HTML document around [`App`], rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                // ECharts draws the dashboard's charming charts; local file, before hydration.
                <script defer src="/vendor/echarts.min.js"></script>
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body class="bg-slate-50 text-slate-900 antialiased">
                <App />
            </body>
        </html>
    }
}

/// The application: stylesheet, navigation and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Stylesheet id="kadr" href="/pkg/kadr.css" />
        <Title text="kadr" />
        <Router>
            <nav class="border-b border-slate-200 bg-white">
                <div class="mx-auto flex max-w-6xl items-center gap-6 px-6 py-3">
                    <A href="/" attr:class="text-lg font-semibold tracking-tight">
                        "kadr"
                    </A>
                    <A href="/" attr:class="text-sm text-slate-600 hover:text-slate-900">
                        "Analyse"
                    </A>
                    <A href="/search" attr:class="text-sm text-slate-600 hover:text-slate-900">
                        "Search"
                    </A>
                    <A href="/dashboard" attr:class="text-sm text-slate-600 hover:text-slate-900">
                        "Dashboard"
                    </A>
                    <A href="/dataset" attr:class="text-sm text-slate-600 hover:text-slate-900">
                        "Dataset"
                    </A>
                    <a href="/docs/" class="ml-auto text-sm text-slate-600 hover:text-slate-900" rel="external">
                        "API"
                    </a>
                </div>
            </nav>
            <main class="mx-auto max-w-6xl p-6">
                <Routes fallback=|| view! { <p data-testid="not-found">"Page not found."</p> }>
                    <Route path=path!("") view=analyse::AnalysePage ssr=SsrMode::Async />
                    // Async: the result is in the first HTML, so the page works with JS off.
                    <Route path=path!("/a/:hash") view=analyse::ResultPage ssr=SsrMode::Async />
                    <Route path=path!("/search") view=search::SearchPage ssr=SsrMode::Async />
                    <Route path=path!("/dashboard") view=dashboard::DashboardPage ssr=SsrMode::Async />
                    <Route path=path!("/dataset") view=dataset::DatasetPage ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
    }
}

/// Browser entry point: attaches event handlers to the server-rendered HTML.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}
