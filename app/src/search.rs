//! Search by text: `/search?q=a+red+car` finds the indexed images whose texts are most like
//! the sentence; `&hash=` fuses it with an example image (an upload or an indexed image, by
//! content hash), as the result page's "refine with words" box does.
//!
//! The form is a plain GET form: the page is rendered on the server with its results, so it
//! works before hydration and without JavaScript. Server function: `GET /api/v1/search`.

use crate::analyse::ErrorBox;
use crate::errors::ApiError;
use crate::types::{TextSearch, MAX_SEARCH_TEXT};
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;
use leptos_router::hooks::use_query_map;

/// Results shown by default.
pub const DEFAULT_RESULTS: usize = 20;

/// The indexed images whose texts are most like `q` (their backbone labels, embedded by the
/// text model), fused with the image of content `hash` when given: `k` results (default 20,
/// at most 50), only from the `split`s and `category`s listed (comma-separated) when given.
#[server(prefix = "/api/v1", endpoint = "search", input = GetUrl)]
pub async fn search_text(
    q: String,
    #[server(default)] hash: Option<String>,
    #[server(default)] k: Option<usize>,
    #[server(default)] split: Option<String>,
    #[server(default)] category: Option<String>,
) -> Result<TextSearch, ApiError> {
    use crate::types::{check_search_text, is_content_hash, MAX_K};
    let text = check_search_text(&q)
        .map_err(|why| ApiError::invalid("q", why))?
        .to_string();
    let hash = match hash.filter(|h| !h.is_empty()) {
        None => None,
        Some(h) if is_content_hash(&h) => Some(h.to_ascii_lowercase()),
        Some(_) => {
            return Err(ApiError::invalid(
                "hash",
                "must be 64 hexadecimal characters",
            ))
        }
    };
    let k = k.unwrap_or(DEFAULT_RESULTS);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::invalid(
            "k",
            format!("{k} is not within 1..{MAX_K}"),
        ));
    }
    let filter = kadr_types::filter::Filter::parse(
        split.as_deref().unwrap_or(""),
        category.as_deref().unwrap_or(""),
    );
    crate::backend::blocking(move |b| b.search_text(&text, hash.as_deref(), k, &filter)).await
}

/// The search box: a GET form to `/search`, with the example image's hash when there is one.
#[component]
pub fn SearchBox(
    /// The sentence already asked, if any.
    text: String,
    /// Content hash of the example image the words are fused with.
    hash: Option<String>,
    /// The (screen-reader) label of the input.
    label: &'static str,
) -> impl IntoView {
    let placeholder = if hash.is_some() {
        "words to add to this image, e.g. \"on a red background\""
    } else {
        "describe what you look for, e.g. \"a red car\""
    };
    view! {
        <form method="get" action="/search" class="flex gap-2" role="search" data-testid="search-form">
            <label class="sr-only" for="search-q">{label}</label>
            <input
                id="search-q"
                name="q"
                type="search"
                required
                maxlength=MAX_SEARCH_TEXT.to_string()
                value=text
                placeholder=placeholder
                data-testid="search-input"
                class="w-full rounded border border-slate-300 px-3 py-1.5 text-sm focus:border-sky-500 focus:outline-none"
            />
            {hash.map(|h| view! { <input type="hidden" name="hash" value=h /> })}
            <button
                type="submit"
                data-testid="search-submit"
                class="rounded bg-sky-600 px-3 py-1.5 text-sm font-medium text-white hover:bg-sky-700"
            >
                "Search"
            </button>
        </form>
    }
}

/// `/search?q=…[&hash=…]`: the search box and, once asked, the results.
#[component]
pub fn SearchPage() -> impl IntoView {
    let query = use_query_map();
    let asked = move || {
        query.with(|q| {
            (
                q.get("q").unwrap_or_default(),
                q.get("hash").filter(|h| !h.is_empty()),
            )
        })
    };
    let results = Resource::new(asked, |(q, hash)| async move {
        if q.trim().is_empty() {
            None
        } else {
            Some(search_text(q, hash, None, None, None).await)
        }
    });
    view! {
        <leptos_meta::Title text="Search · kadr" />
        <h1 class="mb-4 text-xl font-semibold">"Search by text"</h1>
        <div class="mb-4 max-w-2xl">
            {move || {
                let (q, hash) = asked();
                view! { <SearchBox text=q hash=hash label="Search by text" /> }
            }}
        </div>
        <Suspense fallback=|| view! { <p>"Searching…"</p> }>
            {move || Suspend::new(async move {
                match results.await {
                    None => view! {
                        <p class="text-sm text-slate-500">
                            "Words are matched against each indexed image's text (its labels), \
                             embedded by the text model."
                        </p>
                    }
                    .into_any(),
                    Some(Ok(r)) => view! { <Results r /> }.into_any(),
                    Some(Err(e)) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Results(r: TextSearch) -> impl IntoView {
    let summary = match &r.example {
        Some(_) => format!(
            "{} images like the example image and {:?} ({}, {:.0} ms)",
            r.hits.len(),
            r.text,
            r.text_model,
            r.search_ms
        ),
        None => format!(
            "{} images whose texts are most like {:?} ({}, {:.0} ms)",
            r.hits.len(),
            r.text,
            r.text_model,
            r.search_ms
        ),
    };
    view! {
        <div class="space-y-3" data-testid="search-results">
            <div class="flex items-center gap-3 text-sm text-slate-600">
                {r.example.clone().map(|h| view! {
                    <a href=format!("/a/{h}") title="the example image">
                        <img src=format!("/img/{h}?size=thumb") alt="example image" class="h-12 w-12 rounded object-cover" data-testid="search-example" />
                    </a>
                })}
                <span data-testid="search-summary">{summary}</span>
            </div>
            {if r.hits.is_empty() {
                view! { <p class="text-sm text-slate-500" data-testid="no-matches">"Nothing is indexed yet."</p> }.into_any()
            } else {
                view! {
                    <ul class="grid grid-cols-3 gap-2 sm:grid-cols-5 lg:grid-cols-8">
                        {r.hits.into_iter().map(|hit| view! {
                            <li class="text-xs" data-testid="search-hit" data-category=hit.category.clone()>
                                <a href=format!("/a/{}", hit.hash) title=hit.path.clone() class="block">
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
                            </li>
                        }).collect_view()}
                    </ul>
                }.into_any()
            }}
        </div>
    }
}
