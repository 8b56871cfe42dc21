//! The web server: axum routes for the Leptos app (server-rendered pages and server
//! functions), the compiled site (`pkg/` with the WASM bundle and CSS, plus `public/` assets),
//! and graceful shutdown. Pages, components and server functions live in the `app` crate;
//! they reach the engine only through the [`Backend`] provided here as context.

use crate::auth::{self, Auth};
use crate::backend::EngineBackend;
use crate::limits;
use anyhow::Context;
use app::backend::Backend;
use app::{shell, App};
use axum::http::{HeaderValue, Method};
use axum::routing::get;
use axum::{middleware, Router};
use kadr_engine::settings::Settings;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower_http::services::ServeDir;

/// Base name of the wasm-bindgen output in `site_root/pkg` (`kadr.js`, `kadr_bg.wasm`, `kadr.css`).
pub const OUTPUT_NAME: &str = "kadr";
/// Folder under the site root holding the WASM bundle and stylesheet.
pub const PKG_DIR: &str = "pkg";

/// Serves the app on `addr` until Ctrl-C or SIGTERM, then lets open requests finish.
pub async fn serve(
    addr: SocketAddr,
    site_root: PathBuf,
    backend: EngineBackend,
    settings: &Settings,
) -> anyhow::Result<()> {
    if !site_root
        .join(PKG_DIR)
        .join(format!("{OUTPUT_NAME}.js"))
        .is_file()
    {
        tracing::warn!(
            "{} has no {PKG_DIR}/{OUTPUT_NAME}.js: pages will render but not hydrate; run scripts/build-web.sh",
            site_root.display()
        );
    }
    let app = app(site_root, backend, settings)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    tracing::info!(addr = %listener.local_addr()?, "listening");
    crate::conn::serve(
        listener,
        app,
        crate::conn::ConnLimits::from_settings(settings),
        shutdown_signal(),
    )
    .await
    .context("web server failed")
}

/// The router behind the server's protections, outermost first: metrics, CORS, the
/// per-client rate limit, access control, the request time limit and the body size limit.
/// [`crate::conn::serve`] serves it (it gives each request the peer's `ConnectInfo`, which the
/// rate limit keys on; so would `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn app(
    site_root: PathBuf,
    backend: EngineBackend,
    settings: &Settings,
) -> anyhow::Result<Router> {
    let auth = Auth::from_settings(settings)?;
    let mut app = router(site_root, backend, auth.clone())
        .layer(middleware::from_fn_with_state(
            settings.max_request_bytes,
            limits::body_limit,
        ))
        .layer(middleware::from_fn(limits::multipart_only))
        .layer(middleware::from_fn_with_state(
            Duration::from_secs(settings.request_timeout_s),
            limits::timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            limits::panic_response,
        ));
    if let Some(auth) = auth {
        app = app.layer(middleware::from_fn_with_state(auth, auth::guard));
    }
    if let Some(rl) = limits::RateLimit::new(
        settings.rate_limit,
        settings.rate_limit_burst,
        settings.trusted_proxies.clone(),
    ) {
        rl.forget_quiet_clients();
        app = app.layer(middleware::from_fn_with_state(rl, limits::rate_limit));
    }
    if !settings.cors_origins.is_empty() {
        let origins = settings
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o).with_context(|| format!("bad CORS origin {o:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::AUTHORIZATION,
                ]),
        );
    }
    // Installs the recorder before the first request is counted.
    crate::telemetry::prometheus();
    Ok(app.layer(middleware::from_fn(crate::telemetry::track)))
}

/// The complete router: Leptos pages and server functions with `backend` in their context,
/// the REST routes of [`crate::api`], `/metrics`, `/login` and `/logout`, `/pkg` from `site_root/pkg`, the API docs UI from
/// `site_root/docs`, other files from `site_root`, and the app's 404 page otherwise.
pub fn router(site_root: PathBuf, backend: EngineBackend, auth: Option<Arc<Auth>>) -> Router {
    let api = crate::api::routes(backend.clone());
    let metrics_backend = backend.clone();
    let sign_in = Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", get(auth::logout).post(auth::logout))
        .with_state(auth);
    let backend: Arc<dyn Backend> = Arc::new(backend);
    // Built in code so that no Cargo.toml metadata or LEPTOS_* variables are read at runtime.
    let options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root.to_string_lossy().into_owned())
        .site_pkg_dir(PKG_DIR)
        .build();
    let routes = generate_route_list(App);
    // Server functions get the same context: `leptos_routes_with_context` registers each of
    // them through `handle_server_fns_with_context` with this closure.
    let context = move || provide_context(backend.clone());

    Router::new()
        .leptos_routes_with_context(&options, routes, context.clone(), {
            let options = options.clone();
            move || shell(options.clone())
        })
        .merge(api)
        .merge(sign_in)
        .route(
            "/metrics",
            get(move || {
                let b = metrics_backend.clone();
                async move {
                    metrics::gauge!("kadr_batch_size_mean").set(b.mean_batch_size());
                    crate::telemetry::render(b.index_len()).await
                }
            }),
        )
        .route(
            "/docs",
            axum::routing::get(|| async { axum::response::Redirect::permanent("/docs/") }),
        )
        .nest_service("/docs/", ServeDir::new(site_root.join("docs")))
        .nest_service(
            &format!("/{PKG_DIR}"),
            ServeDir::new(site_root.join(PKG_DIR))
                .precompressed_gzip()
                .precompressed_br(),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context(
            context, shell,
        ))
        .with_state(options)
}

/// Resolves on Ctrl-C, or on SIGTERM where there are signals.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("shutting down");
}
