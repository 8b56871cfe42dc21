//! The analyse pages: drop zone, tuning, result cards, export links, the permanent result page.

use super::items::*;
use super::server::*;
use crate::errors::ApiError;
use crate::expand::{Expansion, Rerank};
use crate::search::SearchBox;
use crate::tuning::{use_tuning, TuningPanel};
use crate::types::*;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use std::sync::Arc;

/// Home page: drop zone, tuning and the results of this session's uploads.
#[component]
pub fn AnalysePage() -> impl IntoView {
    let defaults = Resource::new(|| (), |_| get_defaults());
    view! {
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match defaults.await {
                    Ok(d) => view! { <Analyser defaults=d /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Analyser(defaults: UiDefaults) -> impl IntoView {
    let tuning = use_tuning(defaults.tuning.clone());
    let choice = use_choice(tuning);
    let queue = Queue {
        items: RwSignal::new(Vec::new()),
        cancel: RwSignal::new(false),
        busy: RwSignal::new(false),
    };
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let done_hashes = move || {
        queue.items.with(|items| {
            items
                .iter()
                .filter_map(|i| match i.status.get() {
                    ItemStatus::Done(a) => Some(a.hash.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
    };
    let progress = move || {
        queue.items.with(|items| {
            let finished = items
                .iter()
                .filter(|i| {
                    !matches!(
                        i.status.get(),
                        ItemStatus::Queued | ItemStatus::Preparing | ItemStatus::Uploading
                    )
                })
                .count();
            (finished, items.len())
        })
    };
    let on_files = {
        let defaults = defaults.clone();
        move |files: Vec<FileHandle>| {
            #[cfg(feature = "hydrate")]
            super::upload::start(files, queue, defaults.clone());
            #[cfg(not(feature = "hydrate"))]
            let _ = (files, &defaults);
        }
    };

    view! {
        <div class="grid gap-6 lg:grid-cols-[1fr_18rem]">
            <section class="space-y-4">
                <DropZone on_files hydrated />
                <div class="flex flex-wrap items-center gap-3 text-sm" data-testid="batch-bar">
                    {move || {
                        let (finished, total) = progress();
                        (total > 0)
                            .then(|| {
                                view! {
                                    <span data-testid="progress">{format!("{finished} / {total} processed")}</span>
                                    <progress class="w-40" max=total value=finished></progress>
                                }
                            })
                    }}
                    <Show when=move || queue.busy.get()>
                        <button
                            class="rounded border border-red-300 px-3 py-1 text-red-700 hover:bg-red-50"
                            data-testid="cancel"
                            on:click=move |_| queue.cancel.set(true)
                        >
                            "Cancel"
                        </button>
                    </Show>
                    <ExportLinks hashes=Signal::derive(done_hashes) tuning choice />
                </div>
                <div class="space-y-4" data-testid="results">
                    <For
                        each=move || queue.items.get()
                        key=|item| item.key
                        children=move |item| view! { <QueueCard item tuning choice /> }
                    />
                </div>
            </section>
            <aside>
                <TuningPanel tuning />
                <p class="mt-3 text-xs text-slate-500">
                    "Model " <span data-testid="model">{defaults.model.clone()}</span>
                    {(!defaults.vlm)
                        .then_some(". No vision-language model configured: the text analysis shows the backbone's ImageNet labels.")}
                </p>
            </aside>
        </div>
    }
}

/// Drag-and-drop target with file and folder pickers.
#[component]
fn DropZone(
    on_files: impl Fn(Vec<FileHandle>) + Clone + Send + Sync + 'static,
    hydrated: RwSignal<bool>,
) -> impl IntoView {
    let over = RwSignal::new(false);
    // `webkitdirectory` makes the picker choose a folder; it only matters once hydrated.
    let folder_input = NodeRef::<leptos::html::Input>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if let Some(input) = folder_input.get() {
            let _ = input.set_attribute("webkitdirectory", "");
        }
    });
    #[cfg(feature = "hydrate")]
    let from_input = {
        let on_files = on_files.clone();
        move |ev: leptos::ev::Event| {
            let input: web_sys::HtmlInputElement = event_target(&ev);
            if let Some(list) = input.files() {
                on_files(super::upload::file_list(&list));
            }
            input.set_value("");
        }
    };
    // On the server the handler does nothing, but it must have the same (non-Copy) shape.
    #[cfg(not(feature = "hydrate"))]
    let from_input = {
        let on_files = on_files.clone();
        move |_: leptos::ev::Event| {
            let _ = &on_files;
        }
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        over.set(false);
        #[cfg(feature = "hydrate")]
        if let Some(list) = ev.data_transfer().and_then(|d| d.files()) {
            on_files(super::upload::file_list(&list));
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &on_files;
    };

    view! {
        <div
            class="flex flex-col items-center justify-center gap-3 rounded-xl border-2 border-dashed p-8 text-center transition"
            class=("border-sky-500", move || over.get())
            class=("bg-sky-50", move || over.get())
            class=("border-slate-300", move || !over.get())
            class=("bg-white", move || !over.get())
            data-testid="dropzone"
            data-ready=move || hydrated.get().to_string()
            on:dragover=move |ev| {
                ev.prevent_default();
                over.set(true);
            }
            on:dragleave=move |_| over.set(false)
            on:drop=on_drop
        >
            <p class="text-base font-medium">"Drop images here"</p>
            <p class="text-sm text-slate-500">
                "JPEG, PNG, WebP, GIF or BMP. Large images are downscaled in the browser before upload."
            </p>
            <div class="flex gap-3 text-sm">
                <label class="cursor-pointer rounded bg-slate-800 px-3 py-1.5 text-white hover:bg-slate-700">
                    "Choose files"
                    <input
                        type="file"
                        multiple
                        accept="image/*"
                        class="sr-only"
                        data-testid="file-input"
                        on:change=from_input.clone()
                    />
                </label>
                <label class="cursor-pointer rounded border border-slate-300 px-3 py-1.5 hover:bg-slate-50">
                    "Choose a folder"
                    <input type="file" multiple class="sr-only" node_ref=folder_input on:change=from_input />
                </label>
            </div>
            <Show when=move || !hydrated.get()>
                <p class="text-xs text-amber-700">"Uploading needs JavaScript; results pages work without it."</p>
            </Show>
        </div>
    }
}

/// A queued file: its thumbnail and status until the analysis arrives, then the result.
#[component]
fn QueueCard(item: UploadItem, tuning: Memo<Tuning>, choice: Choice) -> impl IntoView {
    let status = item.status;
    let name = item.name.clone();
    let preview = item.preview.clone();
    move || match status.get() {
        ItemStatus::Done(analysis) => match preview.clone() {
            Some(p) => view! { <ResultCard analysis tuning choice preview=p /> }.into_any(),
            None => view! { <ResultCard analysis tuning choice /> }.into_any(),
        },
        other => {
            let failed = matches!(other, ItemStatus::Failed(_));
            let message = match &other {
                ItemStatus::Failed(m) => m.clone(),
                s => s.label().to_string(),
            };
            view! {
                <div
                    class="flex items-center gap-4 rounded-lg border bg-white p-3"
                    class=("border-red-300", failed)
                    class=("border-slate-200", !failed)
                    data-testid="result-card"
                    data-status=other.label()
                >
                    {preview.clone().map(|src| view! { <img src=src alt="" class="h-16 w-16 rounded object-cover" /> })}
                    <div class="min-w-0">
                        <p class="truncate font-medium">{name.clone()}</p>
                        <p class="text-sm" class=("text-red-700", failed) class=("text-slate-500", !failed) data-testid="item-message">
                            {message}
                        </p>
                    </div>
                </div>
            }
                .into_any()
        }
    }
}

/// What the "best" category source resolves to under the page's tuning (the server compares
/// the head with the vote on `valid/`); `None` until it is known, or when the tuning names the
/// source itself.
pub type Choice = Resource<Option<Result<CategoryChoice, ApiError>>>;

/// The [`Choice`] for `tuning`, asked again when its vote changes.
pub fn use_choice(tuning: Memo<Tuning>) -> Choice {
    Resource::new(
        move || {
            let t = tuning.get();
            // Only the vote's fields matter to the choice.
            (t.by == Decider::Best).then_some(Tuning { qe: 0, dba: 0, ..t })
        },
        |t| async move {
            match t {
                Some(t) => Some(choice_for(t).await),
                None => None,
            }
        },
    )
}

/// The category source for `tuning`: the vote or the head ("best" as `choice` resolved it;
/// the vote until it is known).
fn resolved(tuning: &Tuning, choice: Choice) -> (Decider, Option<String>) {
    match tuning.by {
        Decider::Best => match choice.get().flatten() {
            Some(Ok(c)) => (c.by, Some(c.reason)),
            _ => (Decider::Vote, None),
        },
        by => (by, None),
    }
}

/// Links to the CSV export and the submission of `hashes` under the current tuning. Plain
/// links: the server writes the files, so they match what the API gives.
#[component]
pub fn ExportLinks(
    hashes: Signal<Vec<String>>,
    tuning: Memo<Tuning>,
    choice: Choice,
) -> impl IntoView {
    let href = move |what: &str| {
        format!(
            "/api/v1/{what}?hashes={}&{}",
            hashes.get().join(","),
            tuning.get().to_query()
        )
    };
    let class = "rounded border border-slate-300 bg-white px-3 py-1 hover:bg-slate-50";
    view! {
        <Show when=move || !hashes.get().is_empty()>
            <a class=class href=move || href("export.csv") download="kadr-results.csv" data-testid="export-csv">
                "Export CSV"
            </a>
            <a
                class=class
                href=move || href("submission.csv")
                download="submission.csv"
                data-testid="download-submission"
            >
                "Download Submission"
            </a>
            <span class="text-xs text-slate-500" data-testid="category-source">
                {move || match resolved(&tuning.get(), choice) {
                    (_, Some(reason)) => format!("Categories {reason}."),
                    (by, None) => format!("Categories by the {}.", by.as_str()),
                }}
            </span>
        </Show>
    }
}

/// One analysis under the current tuning: visual match, category match (the vote, and the
/// head's guess when a head is trained), AI text. When the tuning's re-ranking (query
/// expansion, database augmentation) is not the one the hits were searched with, the analysis
/// is fetched again with it.
#[component]
pub fn ResultCard(
    analysis: Arc<Analysis>,
    tuning: Memo<Tuning>,
    choice: Choice,
    #[prop(optional)] preview: Option<String>,
) -> impl IntoView {
    let src = preview.unwrap_or_else(|| format!("/img/{}?size=thumb", analysis.hash));
    let a = analysis.clone();
    let permalink = move || format!("/a/{}?{}", a.hash, tuning.get().to_query());
    let searched = Rerank {
        qe: analysis.expansion,
        dba: analysis.augmentation,
    };
    let hash = analysis.hash.clone();
    let again = Resource::new(
        move || {
            let want = tuning.get().rerank();
            (!same_rerank(&want, &searched) && want.validate().is_ok()).then_some(want)
        },
        move |want| {
            let hash = hash.clone();
            async move {
                match want {
                    Some(rr) => Some(analysis_reranked(hash, rr).await),
                    None => None,
                }
            }
        },
    );
    let base = analysis.clone();
    let current = move || -> Result<Arc<Analysis>, ApiError> {
        match again.get().flatten() {
            Some(Ok(a)) => Ok(Arc::new(a)),
            Some(Err(e)) => Err(e),
            None => Ok(base.clone()),
        }
    };
    let ranked = move || {
        let t = tuning.get();
        let cfg = t.validate().map_err(ApiError::from)?;
        let a = current()?;
        let (by, _) = resolved(&t, choice);
        let r = a.rank(&cfg);
        let decision = a.decide(&r, &cfg, by);
        Ok::<_, ApiError>((
            r.matches.into_iter().cloned().collect::<Vec<_>>(),
            r.vote,
            decision,
            a.head.clone(),
            a.expansion,
            a.augmentation,
        ))
    };
    let text = analysis.text.clone();
    let timings = analysis.timings.clone();

    view! {
        <article class="rounded-lg border border-slate-200 bg-white p-4" data-testid="result-card" data-status="done" data-hash=analysis.hash.clone()>
            <header class="mb-3 flex items-start gap-4">
                <img src=src alt=analysis.name.clone() class="h-24 w-24 rounded object-cover" />
                <div class="min-w-0 flex-1">
                    <h3 class="truncate font-semibold" data-testid="file-name">{analysis.name.clone()}</h3>
                    <p class="text-xs text-slate-500">
                        {format!(
                            "{}×{} px · embed {:.0} ms · search {:.1} ms",
                            analysis.width,
                            analysis.height,
                            timings.embed_ms,
                            timings.search_ms,
                        )}
                    </p>
                    <a class="text-xs text-sky-700 hover:underline" href=permalink data-testid="permalink">
                        "Permanent link"
                    </a>
                </div>
            </header>
            {move || match ranked() {
                Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                Ok((matches, vote, decision, head, expansion, augmentation)) => {
                    let by_head = decision.by == Decider::Head;
                    view! {
                        <div class="grid gap-4 md:grid-cols-[1fr_14rem]">
                            <section data-testid="visual-match" data-qe=expansion.n data-dba=augmentation.n>
                                <h4 class="mb-2 text-xs font-semibold uppercase tracking-wide text-slate-500">
                                    "Visual match "
                                    <span data-testid="match-count">{matches.len()}</span>
                                    {(!expansion.is_off())
                                        .then(|| {
                                            format!(
                                                " · query expanded with {} neighbours (α {})",
                                                expansion.n,
                                                expansion.alpha,
                                            )
                                        })}
                                    {(!augmentation.is_off())
                                        .then(|| {
                                            format!(
                                                " · indexed images augmented with {} neighbours (α {})",
                                                augmentation.n,
                                                augmentation.alpha,
                                            )
                                        })}
                                </h4>
                                <MatchGrid matches tuning />
                            </section>
                            <section data-testid="category-match" data-by=decision.by.as_str()>
                                <h4 class="mb-2 text-xs font-semibold uppercase tracking-wide text-slate-500">
                                    "Category match"
                                </h4>
                                <p class="text-lg font-semibold" data-testid="category">
                                    {decision.category.clone().unwrap_or_else(|| "uncertain".into())}
                                </p>
                                <p class="text-sm text-slate-600">
                                    {if by_head { "head probability " } else { "confidence " }}
                                    <span data-testid="confidence">{format!("{:.2}", decision.confidence)}</span>
                                    {(!by_head).then(|| format!(" · {} voters", vote.voters))}
                                </p>
                                {by_head
                                    .then(|| {
                                        view! {
                                            <p class="text-xs text-slate-500" data-testid="vote-category">
                                                {format!(
                                                    "The vote: {} ({:.2})",
                                                    vote.category.clone().unwrap_or_else(|| "uncertain".into()),
                                                    vote.confidence,
                                                )}
                                            </p>
                                        }
                                    })}
                                <VoteSplit split=vote.split.clone() />
                                {head.map(|h| view! { <HeadSection head=h /> })}
                            </section>
                        </div>
                    }
                        .into_any()
                }
            }}
            <TextSection text />
        </article>
    }
}

/// The trained head's most probable categories with their calibrated probabilities.
#[component]
fn HeadSection(head: HeadGuess) -> impl IntoView {
    view! {
        <div class="mt-3 border-t border-slate-100 pt-2 text-xs" data-testid="head-guess" data-category=head.category.clone()>
            <p class="font-semibold uppercase tracking-wide text-slate-500">"Trained head"</p>
            <ul class="mt-1 space-y-0.5">
                {head
                    .top
                    .into_iter()
                    .map(|l| {
                        view! {
                            <li class="flex justify-between gap-2">
                                <span class="truncate">{l.label}</span>
                                <span class="tabular-nums">{format!("{:.0}%", l.score * 100.0)}</span>
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
        </div>
    }
}

/// The matched images: lazy thumbnails, score and category; click to enlarge, "similar" to
/// search from that image.
#[component]
fn MatchGrid(matches: Vec<Hit>, tuning: Memo<Tuning>) -> impl IntoView {
    if matches.is_empty() {
        return view! {
            <p class="text-sm text-slate-500" data-testid="no-matches">
                "No indexed image passes the threshold."
            </p>
        }
        .into_any();
    }
    view! {
        <ul class="grid grid-cols-3 gap-2 sm:grid-cols-5">
            {matches
                .into_iter()
                .map(|hit| {
                    let full = format!("/img/{}", hit.hash);
                    let similar = {
                        let hash = hit.hash.clone();
                        move || format!("/a/{hash}?{}", tuning.get().to_query())
                    };
                    view! {
                        <li class="text-xs" data-testid="match" data-category=hit.category.clone()>
                            <a href=full.clone() target="_blank" title=hit.path.clone() class="block">
                                <img
                                    src=format!("/img/{}?size=thumb", hit.hash)
                                    loading="lazy"
                                    alt=hit.path.clone()
                                    class="aspect-square w-full rounded object-cover hover:ring-2 hover:ring-sky-400"
                                />
                            </a>
                            <div class="mt-0.5 flex justify-between gap-1">
                                <span class="truncate">{hit.category.clone()}</span>
                                <span class="tabular-nums text-slate-500">{format!("{:.2}", hit.score)}</span>
                            </div>
                            <a class="text-sky-700 hover:underline" href=similar data-testid="find-similar">
                                "similar"
                            </a>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
    .into_any()
}

/// The vote shares as a stacked bar with a legend.
#[component]
fn VoteSplit(split: Vec<(String, f32)>) -> impl IntoView {
    const COLOURS: [&str; 8] = [
        "#0ea5e9", "#f97316", "#22c55e", "#a855f7", "#ef4444", "#eab308", "#14b8a6", "#64748b",
    ];
    let colour = |i: usize| COLOURS[i % COLOURS.len()];
    view! {
        <div class="mt-2 flex h-3 w-full overflow-hidden rounded bg-slate-100" data-testid="vote-split" role="img" aria-label="vote split">
            {split
                .iter()
                .enumerate()
                .map(|(i, (_, share))| {
                    view! { <div style=format!("width:{:.1}%;background:{}", share * 100.0, colour(i))></div> }
                })
                .collect_view()}
        </div>
        <ul class="mt-1 space-y-0.5 text-xs">
            {split
                .into_iter()
                .enumerate()
                .map(|(i, (cat, share))| {
                    view! {
                        <li class="flex items-center gap-1">
                            <span class="inline-block h-2 w-2 rounded-sm" style=format!("background:{}", colour(i))></span>
                            <span class="flex-1 truncate">{cat}</span>
                            <span class="tabular-nums">{format!("{:.0}%", share * 100.0)}</span>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
}

/// Caption and labels, marked by where they come from.
#[component]
fn TextSection(text: TextAnalysis) -> impl IntoView {
    let source = match text.source {
        TextSource::Vlm => "vision-language model",
        TextSource::ImagenetLabels => "backbone ImageNet labels (no VLM configured)",
    };
    view! {
        <section class="mt-3 border-t border-slate-100 pt-3" data-testid="ai-text">
            <h4 class="text-xs font-semibold uppercase tracking-wide text-slate-500">
                "AI text analysis " <span class="normal-case font-normal" data-testid="text-source">{format!("({source})")}</span>
            </h4>
            {text.caption.map(|c| view! { <p class="mt-1 text-sm" data-testid="caption">{c}</p> })}
            <ul class="mt-1 flex flex-wrap gap-1 text-xs">
                {text
                    .labels
                    .into_iter()
                    .map(|l| {
                        view! {
                            <li class="rounded bg-slate-100 px-2 py-0.5" data-testid="text-label">
                                {format!("{} {:.0}%", l.label, l.score * 100.0)}
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
        </section>
    }
}

/// An error message box.
#[component]
pub fn ErrorBox(error: ApiError) -> impl IntoView {
    view! {
        <p class="rounded border border-red-200 bg-red-50 p-3 text-sm text-red-800" data-testid="error">
            {error.to_string()}
        </p>
    }
}

/// `/a/{hash}`: one analysis, rendered on the server, with the tuning from the URL.
#[component]
pub fn ResultPage() -> impl IntoView {
    let params = use_params_map();
    let hash = move || params.with(|p| p.get("hash").unwrap_or_default());
    let defaults = Resource::new(|| (), |_| get_defaults());
    // The hits are searched with the re-ranking of the URL the page was opened with, so it is
    // right without JavaScript too; later changes are the card's to fetch.
    let rr = leptos_router::hooks::use_query_map()
        .with_untracked(|q| Tuning::from_query(|k| q.get(k), &Tuning::default()).rerank());
    let analysis = Resource::new(hash, move |h| analysis_reranked(h, rr));
    view! {
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                let d = match defaults.await {
                    Ok(d) => d,
                    Err(e) => return view! { <ErrorBox error=e /> }.into_any(),
                };
                match analysis.await {
                    Ok(a) => view! { <ResultView defaults=d analysis=Arc::new(a) /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// Whether two re-rankings search alike (expansions that are off are alike whatever their α).
fn same_rerank(a: &Rerank, b: &Rerank) -> bool {
    let same = |x: &Expansion, y: &Expansion| x == y || (x.is_off() && y.is_off());
    same(&a.qe, &b.qe) && same(&a.dba, &b.dba)
}

/// The analysis of `hash` with all its hits, searched with `rr`.
async fn analysis_reranked(hash: String, rr: Rerank) -> Result<Analysis, ApiError> {
    let (qe, dba) = (rr.qe, rr.dba);
    get_analysis(
        hash,
        None,
        None,
        Some(qe.n),
        Some(qe.alpha),
        Some(dba.n),
        Some(dba.alpha),
    )
    .await
}

/// The `<title>` text of a result page. leptos_meta writes the title into the server's HTML
/// as it is given (and in the browser sets `document.title`, which is plain text), so the
/// server's copy of a user-supplied name is escaped there.
pub fn page_title(name: &str) -> String {
    let title = format!("{name} · kadr");
    #[cfg(feature = "ssr")]
    let title = crate::escape_html(&title);
    title
}

#[component]
fn ResultView(defaults: UiDefaults, analysis: Arc<Analysis>) -> impl IntoView {
    let tuning = use_tuning(defaults.tuning);
    let choice = use_choice(tuning);
    let hashes = Signal::derive({
        let h = analysis.hash.clone();
        move || vec![h.clone()]
    });
    let title = page_title(&analysis.name);
    view! {
        <leptos_meta::Title text=title />
        <div class="grid gap-6 lg:grid-cols-[1fr_18rem]">
            <section class="space-y-4">
                <div class="flex flex-wrap items-center gap-3 text-sm">
                    <a href="/" class="text-sky-700 hover:underline">"← Analyse more images"</a>
                    {analysis
                        .indexed_category
                        .clone()
                        .map(|c| view! { <span class="text-slate-500">{format!("Indexed image, filed under {c}")}</span> })}
                    <ExportLinks hashes tuning choice />
                </div>
                <ResultCard analysis=analysis.clone() tuning choice />
                <div class="max-w-xl" data-testid="refine">
                    <SearchBox text=String::new() hash=Some(analysis.hash.clone()) label="Refine with words" />
                </div>
            </section>
            <aside>
                <TuningPanel tuning />
            </aside>
        </div>
    }
}
