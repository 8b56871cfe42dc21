//! Index summary: the server function that reads it from the backend, and the home page that
//! shows it.

use leptos::prelude::*;

use crate::types::IndexSummary;

/// The index summary from the [`crate::backend::Backend`] provided as server context.
#[server(prefix = "/api", endpoint = "summary")]
pub async fn get_summary() -> Result<IndexSummary, ServerFnError> {
    use std::sync::Arc;

    let backend = use_context::<Arc<dyn crate::backend::Backend>>()
        .ok_or_else(|| ServerFnError::new("no backend: the server did not provide one"))?;
    backend.summary().map_err(ServerFnError::new)
}

/// Home page: the index summary, rendered on the server and refreshable once hydrated.
#[component]
pub fn SummaryPage() -> impl IntoView {
    // Bumping `refreshes` re-runs the server function; only possible once hydrated.
    let (refreshes, set_refreshes) = signal(0u32);
    let summary = Resource::new(move || refreshes.get(), |_| get_summary());
    // Effects run only in the browser, so this turns true once the page is hydrated; until
    // then the button is disabled rather than silently dead.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    view! {
        <header class="mb-6 flex items-center justify-between">
            <h1 class="text-2xl font-semibold">"kadr"</h1>
            <div class="flex items-center gap-3 text-sm text-slate-600">
                <span>
                    "Refreshed " <span data-testid="refresh-count">{refreshes}</span> " times"
                </span>
                <button
                    class="rounded bg-slate-800 px-3 py-1 text-white hover:bg-slate-700"
                    class:opacity-50=move || !hydrated.get()
                    data-testid="refresh"
                    disabled=move || !hydrated.get()
                    on:click=move |_| set_refreshes.update(|n| *n += 1)
                >
                    "Refresh"
                </button>
            </div>
        </header>
        <Transition fallback=|| view! { <p>"Loading index summary…"</p> }>
            {move || Suspend::new(async move {
                match summary.await {
                    Ok(summary) => view! { <SummaryView summary /> }.into_any(),
                    Err(err) => {
                        view! {
                            <p class="text-red-700" data-testid="summary-error">
                                {err.to_string()}
                            </p>
                        }
                            .into_any()
                    }
                }
            })}
        </Transition>
    }
}

/// The summary itself: model, total, and a split/category table.
#[component]
fn SummaryView(summary: IndexSummary) -> impl IntoView {
    view! {
        <dl class="mb-4 grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1">
            <dt class="font-medium">"Model"</dt>
            <dd data-testid="model">{summary.model}</dd>
            <dt class="font-medium">"Images"</dt>
            <dd data-testid="total-images">{summary.images}</dd>
        </dl>
        <table class="w-full border-collapse text-left" data-testid="categories">
            <thead>
                <tr class="border-b border-slate-300">
                    <th class="py-1">"Split"</th>
                    <th class="py-1">"Category"</th>
                    <th class="py-1 text-right">"Images"</th>
                </tr>
            </thead>
            <tbody>
                {summary
                    .categories
                    .into_iter()
                    .map(|row| {
                        view! {
                            <tr class="border-b border-slate-200">
                                <td class="py-1">{row.split}</td>
                                <td class="py-1">{row.category}</td>
                                <td class="py-1 text-right tabular-nums">{row.images}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}
