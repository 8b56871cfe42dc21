//! kadr web app: the HTML shell, the router, and one module per user-facing feature.
//!
//! The same crate is compiled twice: with `ssr` into the server (server functions run there,
//! against the [`backend::Backend`] the server provides as context), and with `hydrate` to
//! WASM for the browser. Types shared by both sides live in [`types`]; nothing here touches the
//! engine directly.

pub mod summary;
pub mod types;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    SsrMode, StaticSegment,
};

/// What the web app needs from the engine; the server implements it and provides it as context.
#[cfg(feature = "ssr")]
pub mod backend {
    use crate::types::IndexSummary;

    /// The engine as seen from server functions. Errors are user-facing messages.
    pub trait Backend: Send + Sync {
        /// What the index holds: model, image count, images per split and category.
        fn summary(&self) -> Result<IndexSummary, String>;
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

/// The application: stylesheet, title and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Stylesheet id="kadr" href="/pkg/kadr.css" />
        <Title text="kadr" />
        <Router>
            <main class="mx-auto max-w-3xl p-6">
                <Routes fallback=|| view! { <p>"Page not found."</p> }>
                    // Async: the summary is in the first HTML, so the page works with JS off.
                    <Route path=StaticSegment("") view=summary::SummaryPage ssr=SsrMode::Async />
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
