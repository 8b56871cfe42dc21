//! Dashboard: what has been analysed (categories voted, confidence, time per stage, throughput,
//! refused files) and, once a dataset has been evaluated, how good the index is (MAP@10 per
//! category, confusion matrix, the worst queries, a 2-D map of the embeddings).
//!
//! Below them, the duplicates among the served images (exact and near copies side by side
//! with their similarity, and which leak across splits or categories).
//!
//! Server functions: `GET /api/v1/stats` with the tuning parameters of the page URL;
//! `GET /api/v1/dupes`.

use crate::analyse::ErrorBox;
use crate::charts::{bars, confusion, embedding_map, line, EChart};
use crate::dupes::{DupesReport, Leak};
use crate::errors::ApiError;
use crate::tuning::{use_tuning, TuningPanel};
use crate::types::*;
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

/// Dashboard figures; votes are counted under the given tuning (URL names, all optional).
// The tuning's twelve URL names are the endpoint's query parameters.
#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api/v1", endpoint = "stats", input = GetUrl)]
pub async fn get_stats(
    t: Option<f32>,
    rel: Option<bool>,
    conf: Option<f32>,
    k: Option<usize>,
    mode: Option<String>,
    rename: Option<String>,
    ignore: Option<String>,
    qe: Option<usize>,
    qa: Option<f32>,
    dba: Option<usize>,
    da: Option<f32>,
    by: Option<String>,
) -> Result<Stats, ApiError> {
    use crate::backend::blocking;
    let defaults = crate::backend::backend()?.defaults().tuning;
    let (tuning, cfg) = crate::tuning::TuningArgs {
        t,
        rel,
        conf,
        k,
        mode,
        rename,
        ignore,
        qe,
        qa,
        dba,
        da,
        by,
    }
    .tuning(&defaults)?;
    blocking(move |b| b.stats(&tuning, &cfg)).await
}

/// Exact and near duplicates among the served folders' images, and which of them leak across
/// splits or categories: the first `limit` pairs (default 100, at most 10,000), near copies
/// at cosine similarity `threshold` or above (default: calibrated for the default backbone).
#[server(prefix = "/api/v1", endpoint = "dupes", input = GetUrl)]
pub async fn get_dupes(
    threshold: Option<f32>,
    limit: Option<usize>,
) -> Result<DupesReport, ApiError> {
    use crate::backend::blocking;
    use crate::dupes::{valid_threshold, DEFAULT_NEAR_SIMILARITY, DEFAULT_PAIRS, MAX_PAIRS};
    let threshold = threshold.unwrap_or(DEFAULT_NEAR_SIMILARITY);
    if !valid_threshold(threshold) {
        return Err(ApiError::invalid(
            "threshold",
            format!("{threshold} is not within 0..1"),
        ));
    }
    let limit = limit.unwrap_or(DEFAULT_PAIRS);
    if !(1..=MAX_PAIRS).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("{limit} is not within 1..{MAX_PAIRS}"),
        ));
    }
    blocking(move |b| b.dupes(threshold, limit)).await
}

/// Pairs the dashboard shows.
const DASHBOARD_PAIRS: usize = 24;

/// `/dashboard`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let defaults = Resource::new(|| (), |_| crate::analyse::get_defaults());
    view! {
        <h1 class="mb-4 text-xl font-semibold">"Dashboard"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match defaults.await {
                    Ok(d) => view! { <Dashboard defaults=d /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Dashboard(defaults: UiDefaults) -> impl IntoView {
    let tuning = use_tuning(defaults.tuning);
    let stats = Resource::new(
        move || tuning.get(),
        |t| {
            let a = crate::tuning::TuningArgs::of(t);
            get_stats(
                a.t, a.rel, a.conf, a.k, a.mode, a.rename, a.ignore, a.qe, a.qa, a.dba, a.da, a.by,
            )
        },
    );
    view! {
        <TuningPanel tuning />
        <Suspense fallback=|| view! { <p>"Loading statistics…"</p> }>
            {move || Suspend::new(async move {
                match stats.await {
                    Ok(s) => view! { <StatsView stats=s /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
        <DupesSection />
    }
}

#[component]
fn DupesSection() -> impl IntoView {
    let dupes = Resource::new(|| (), |_| get_dupes(None, Some(DASHBOARD_PAIRS)));
    view! {
        <h2 class="mb-2 mt-8 text-lg font-semibold">"Duplicates and leakage"</h2>
        <Suspense fallback=|| view! { <p>"Looking for duplicates…"</p> }>
            {move || Suspend::new(async move {
                match dupes.await {
                    Ok(r) => view! { <DupesView report=r /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn DupesView(report: DupesReport) -> impl IntoView {
    let headline = format!(
        "{} images: {} exact and {} near duplicate pairs (similarity ≥ {}); {} span two splits, {} two categories.",
        report.images, report.exact, report.near, report.threshold, report.split_leaks, report.category_leaks
    );
    let total = report.exact + report.near;
    let shown = report.pairs.len() as u64;
    let thumb = |hash: &str| format!("/img/{hash}?size=thumb");
    view! {
        <p class="mb-4 text-sm text-slate-600" data-testid="dupes-headline">{headline}</p>
        <ul class="grid gap-3 md:grid-cols-2" data-testid="dupes">
            {report
                .pairs
                .into_iter()
                .map(|p| {
                    let kind = p.kind.as_str();
                    let leaks = p
                        .leakage
                        .iter()
                        .map(|l| match l {
                            Leak::Split => "in two splits",
                            Leak::Category => "in two categories",
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    view! {
                        <li class="flex items-center gap-2 rounded border border-slate-200 bg-white p-2 text-xs" data-testid="dupe-pair" data-kind=kind>
                            <a href=format!("/a/{}", p.a_hash) title=p.a.clone()>
                                <img src=thumb(&p.a_hash) loading="lazy" alt=p.a.clone() class="h-20 w-20 rounded object-contain" />
                            </a>
                            <a href=format!("/a/{}", p.b_hash) title=p.b.clone()>
                                <img src=thumb(&p.b_hash) loading="lazy" alt=p.b.clone() class="h-20 w-20 rounded object-contain" />
                            </a>
                            <div class="min-w-0">
                                <p class="font-medium">{kind} " · similarity " <span data-testid="dupe-similarity">{format!("{:.3}", p.similarity)}</span></p>
                                <p class="truncate" title=p.a.clone()>{p.a.clone()}</p>
                                <p class="truncate" title=p.b.clone()>{p.b.clone()}</p>
                                {(!leaks.is_empty()).then(|| view! { <p class="text-red-700" data-testid="leak">{format!("Leak: {leaks}")}</p> })}
                            </div>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
        {(total > shown)
            .then(|| {
                view! {
                    <p class="mt-2 text-xs text-slate-500">
                        {format!("The first {shown} of {total} pairs; all of them: ")}
                        <code>"kadr dupes"</code> " or " <code>"GET /api/v1/dupes?limit=10000"</code>
                    </p>
                }
            })}
    }
}

fn card(title: &'static str, body: impl IntoView) -> impl IntoView {
    view! {
        <section class="rounded-lg border border-slate-200 bg-white p-4">
            <h2 class="mb-2 text-sm font-semibold">{title}</h2>
            {body}
        </section>
    }
}

#[component]
fn StatsView(stats: Stats) -> impl IntoView {
    let t = &stats.mean_timings;
    let stage_labels = vec![
        "decode".to_string(),
        "embed".into(),
        "search".into(),
        "text".into(),
    ];
    let stage_values = vec![
        t.decode_ms as f64,
        t.embed_ms as f64,
        t.search_ms as f64,
        t.text_ms as f64,
    ];
    let (cat_labels, cat_values): (Vec<String>, Vec<f64>) = stats
        .categories
        .iter()
        .map(|c| (c.label.clone(), c.count as f64))
        .unzip();
    let hist_labels: Vec<String> = (0..stats.confidence_histogram.len())
        .map(|i| format!("{:.1}–{:.1}", i as f32 / 10.0, (i + 1) as f32 / 10.0))
        .collect();
    let hist_values: Vec<f64> = stats
        .confidence_histogram
        .iter()
        .map(|&n| n as f64)
        .collect();
    let (tp_labels, tp_values): (Vec<String>, Vec<f64>) = stats
        .throughput
        .iter()
        .map(|c| (c.label.clone(), c.count as f64))
        .unzip();
    let errors = stats.errors.clone();

    view! {
        <p class="mb-4 text-sm text-slate-600">
            <span data-testid="analysed-count">{stats.analyses}</span>
            " images analysed. Votes counted with the tuning in this page's URL."
        </p>
        <div class="grid gap-4 md:grid-cols-2">
            {card("Voted categories", view! { <EChart id="chart-categories" chart=bars(cat_labels, cat_values, "images") /> })}
            {card("Vote confidence", view! { <EChart id="chart-confidence" chart=bars(hist_labels, hist_values, "images") /> })}
            {card("Mean time per stage (ms)", view! { <EChart id="chart-stages" chart=bars(stage_labels, stage_values, "ms") /> })}
            {card("Throughput (images per minute)", view! { <EChart id="chart-throughput" chart=line(tp_labels, tp_values, "images") /> })}
            {card(
                "Refused files",
                view! {
                    <table class="w-full text-sm" data-testid="errors">
                        <tbody>
                            {if errors.is_empty() {
                                view! { <tr><td class="text-slate-500">"None so far."</td></tr> }.into_any()
                            } else {
                                errors
                                    .into_iter()
                                    .map(|e| view! { <tr><td>{e.label}</td><td class="text-right tabular-nums">{e.count}</td></tr> })
                                    .collect_view()
                                    .into_any()
                            }}
                        </tbody>
                    </table>
                },
            )}
        </div>
        {match stats.eval {
            Some(eval) => view! { <EvalSection eval /> }.into_any(),
            None => {
                view! {
                    <p class="mt-6 text-sm text-slate-600" data-testid="no-eval">
                        "No evaluation yet: run one from the " <a class="text-sky-700 underline" href="/dataset">"dataset page"</a>
                        " or with " <code>"kadr eval"</code> "."
                    </p>
                }
                    .into_any()
            }
        }}
    }
}

#[component]
fn EvalSection(eval: EvalView) -> impl IntoView {
    let (cat_labels, maps): (Vec<String>, Vec<f64>) = eval
        .per_category
        .iter()
        .map(|c| (c.category.clone(), c.map_at_10))
        .unzip();
    let mut predicted = eval.confusion_labels.clone();
    predicted.push("(none)".into());
    let heat = confusion(eval.confusion_labels.clone(), predicted, &eval.confusion);
    let map = embedding_map(&eval.map);
    view! {
        <h2 class="mb-2 mt-8 text-lg font-semibold">"Evaluation"</h2>
        <p class="mb-1 text-sm text-slate-600" data-testid="eval-headline">
            {format!(
                "{} · {} images · {} · {}: MAP@10 {:.4}, vote accuracy {:.4}{}",
                eval.folder,
                eval.images,
                eval.mode,
                eval.model,
                eval.map_at_10,
                eval.vote_accuracy,
                eval.head_accuracy.map(|h| format!(", head accuracy {h:.4}")).unwrap_or_default(),
            )}
        </p>
        <p class="mb-4 text-xs text-slate-500" data-testid="eval-tuning">
            {if eval.tuning.is_empty() {
                "As it was run (it cannot be evaluated again under another tuning).".to_string()
            } else {
                format!("Evaluated again from the stored vectors under this page's tuning: {}.", eval.tuning)
            }}
        </p>
        <div class="grid gap-4 md:grid-cols-2">
            {card("MAP@10 per category", view! { <EChart id="chart-map" chart=bars(cat_labels, maps, "MAP@10") /> })}
            {card("Confusion matrix", view! { <EChart id="chart-confusion" chart=heat height=360 /> })}
            {card("Embedding map (PCA)", view! { <EChart id="chart-embedding" chart=map height=420 /> })}
            {card(
                "Worst queries",
                view! {
                    <ul class="grid grid-cols-4 gap-2 text-xs" data-testid="worst">
                        {eval
                            .worst
                            .into_iter()
                            .map(|w| {
                                view! {
                                    <li>
                                        <a href=format!("/a/{}", w.hash) title=w.path.clone()>
                                            <img src=format!("/img/{}?size=thumb", w.hash) loading="lazy" alt=w.path.clone() class="aspect-square w-full rounded object-cover" />
                                        </a>
                                        <p class="truncate">{w.category.clone()} " → " {w.predicted.clone().unwrap_or_else(|| "none".into())}</p>
                                        <p class="text-slate-500">{format!("AP {:.2}", w.ap)}</p>
                                    </li>
                                }
                            })
                            .collect_view()}
                    </ul>
                },
            )}
        </div>
    }
}
