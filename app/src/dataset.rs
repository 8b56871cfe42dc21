//! Dataset: what the index holds (per split, per category, the model), and the long jobs over
//! dataset folders — add a folder, re-index, evaluate — with their progress on the page.
//!
//! Server functions: `GET /api/v1/summary`, `POST /api/v1/jobs` (JSON [`JobRequest`]),
//! `GET /api/v1/job?id=`, `GET /api/v1/jobs`.

use crate::analyse::ErrorBox;
use crate::errors::ApiError;
use crate::types::*;
use leptos::prelude::*;
use leptos::server_fn::codec::{GetUrl, Json};

/// What the index holds.
#[server(prefix = "/api/v1", endpoint = "summary", input = GetUrl)]
pub async fn get_summary() -> Result<IndexSummary, ApiError> {
    crate::backend::blocking(|b| b.summary()).await
}

/// Starts a job; answers at once with its id, progress is at `GET /api/v1/job?id=`.
#[server(prefix = "/api/v1", endpoint = "jobs", input = Json)]
pub async fn start_job(request: JobRequest) -> Result<JobStatus, ApiError> {
    // The backend checks the folder: absolute, no control characters, inside the data roots.
    crate::backend::blocking(move |b| b.start_job(request)).await
}

/// One job's progress.
#[server(prefix = "/api/v1", endpoint = "job", input = GetUrl)]
pub async fn get_job(id: u64) -> Result<JobStatus, ApiError> {
    crate::backend::blocking(move |b| b.job(id)).await
}

/// Every job since the server started, newest first.
#[server(prefix = "/api/v1", endpoint = "job-list", input = GetUrl)]
pub async fn list_jobs() -> Result<Vec<JobStatus>, ApiError> {
    crate::backend::blocking(|b| Ok(b.jobs())).await
}

/// `/dataset`.
#[component]
pub fn DatasetPage() -> impl IntoView {
    // Bumped when a job finishes, so the summary follows what the job changed.
    let version = RwSignal::new(0u32);
    let summary = Resource::new(move || version.get(), |_| get_summary());
    let jobs = Resource::new(move || version.get(), |_| list_jobs());
    let folder = RwSignal::new(String::new());
    let running: RwSignal<Option<JobStatus>> = RwSignal::new(None);
    let start = Action::new(move |req: &JobRequest| {
        let req = req.clone();
        async move {
            let result = start_job(req).await;
            if let Ok(job) = &result {
                running.set(Some(job.clone()));
                #[cfg(feature = "hydrate")]
                poll(job.id, running, version);
            }
            result
        }
    });
    let busy = move || running.get().is_some_and(|j| j.state == JobState::Running);

    view! {
        <h1 class="mb-4 text-xl font-semibold">"Dataset"</h1>
        <Transition fallback=|| view! { <p>"Loading index summary…"</p> }>
            {move || Suspend::new(async move {
                match summary.await {
                    Ok(summary) => view! { <SummaryView summary /> }.into_any(),
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                }
            })}
        </Transition>
        <section class="mt-6 space-y-3 rounded-lg border border-slate-200 bg-white p-4">
            <h2 class="text-sm font-semibold">"Jobs"</h2>
            <form
                class="flex flex-wrap gap-2"
                on:submit=move |ev| {
                    ev.prevent_default();
                    start.dispatch(JobRequest::AddFolder { folder: folder.get_untracked() });
                }
            >
                <input
                    type="text"
                    class="min-w-0 flex-1 rounded border border-slate-300 px-2 py-1 text-sm"
                    placeholder="/path/on/the/server/with/train/valid/test"
                    data-testid="folder"
                    prop:value=move || folder.get()
                    on:input=move |ev| folder.set(event_target_value(&ev))
                />
                <button type="submit" class="rounded bg-slate-800 px-3 py-1 text-sm text-white disabled:opacity-50" disabled=busy data-testid="add-folder">
                    "Add folder"
                </button>
                <button
                    type="button"
                    class="rounded border border-slate-300 px-3 py-1 text-sm disabled:opacity-50"
                    disabled=busy
                    data-testid="reindex"
                    on:click=move |_| {
                        start.dispatch(JobRequest::Reindex);
                    }
                >
                    "Re-index"
                </button>
                <button
                    type="button"
                    class="rounded border border-slate-300 px-3 py-1 text-sm disabled:opacity-50"
                    disabled=busy
                    data-testid="evaluate"
                    on:click=move |_| {
                        start.dispatch(JobRequest::Evaluate);
                    }
                >
                    "Evaluate"
                </button>
            </form>
            {move || {
                start
                    .value()
                    .get()
                    .and_then(Result::err)
                    .map(|e| view! { <ErrorBox error=e /> })
            }}
            // The job started from this page, above the list of earlier ones (which the
            // history keeps across restarts).
            {move || running.get().map(|job| view! { <div data-testid="current-job"><JobRow job /></div> })}
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    jobs.await
                        .map(|jobs| {
                            view! {
                                <ul class="space-y-1 text-sm text-slate-600" data-testid="job-list">
                                    {jobs.into_iter().map(|job| view! { <li><JobRow job /></li> }).collect_view()}
                                </ul>
                            }
                        })
                        .ok()
                })}
            </Transition>
        </section>
    }
}

/// Asks for the job's progress every half second until it ends.
#[cfg(feature = "hydrate")]
fn poll(id: u64, running: RwSignal<Option<JobStatus>>, version: RwSignal<u32>) {
    set_timeout(
        move || {
            leptos::task::spawn_local(async move {
                match get_job(id).await {
                    Ok(job) => {
                        let ended = job.state != JobState::Running;
                        running.set(Some(job));
                        if ended {
                            version.update(|v| *v += 1);
                        } else {
                            poll(id, running, version);
                        }
                    }
                    Err(_) => poll(id, running, version),
                }
            })
        },
        std::time::Duration::from_millis(500),
    );
}

#[component]
fn JobRow(job: JobStatus) -> impl IntoView {
    let pct = if job.total > 0 {
        job.done as f64 / job.total as f64 * 100.0
    } else {
        0.0
    };
    let state = match job.state {
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Interrupted => "interrupted",
    };
    view! {
        <div class="flex flex-wrap items-center gap-3 text-sm" data-testid="job" data-state=state>
            <span class="font-medium">{job.title}</span>
            <progress max="100" value=pct class="w-40"></progress>
            <span class="tabular-nums">{format!("{}/{}", job.done, job.total)}</span>
            <span class=("text-red-700", matches!(job.state, JobState::Failed | JobState::Interrupted))>{job.message}</span>
        </div>
    }
}

/// The summary itself: model, total, and a split/category table.
#[component]
fn SummaryView(summary: IndexSummary) -> impl IntoView {
    view! {
        <dl class="mb-4 grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1 text-sm">
            <dt class="font-medium">"Model"</dt>
            <dd data-testid="model">{summary.model}</dd>
            <dt class="font-medium">"Images"</dt>
            <dd data-testid="total-images">{summary.images}</dd>
            <dt class="font-medium">"Folders"</dt>
            <dd data-testid="folders">{summary.folders.join(", ")}</dd>
        </dl>
        <table class="w-full border-collapse bg-white text-left text-sm" data-testid="categories">
            <thead>
                <tr class="border-b border-slate-300">
                    <th class="px-2 py-1">"Split"</th>
                    <th class="px-2 py-1">"Category"</th>
                    <th class="px-2 py-1 text-right">"Images"</th>
                </tr>
            </thead>
            <tbody>
                {summary
                    .categories
                    .into_iter()
                    .map(|row| {
                        let split = if row.split.is_empty() { "(all)".to_string() } else { row.split };
                        view! {
                            <tr class="border-b border-slate-200">
                                <td class="px-2 py-1">{split}</td>
                                <td class="px-2 py-1">{row.category}</td>
                                <td class="px-2 py-1 text-right tabular-nums">{row.images}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}
