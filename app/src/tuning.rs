//! Tuning: the settings that turn neighbours into matches and a category, kept in the page URL
//! so a view can be shared. The panel is a plain GET form (works with JavaScript off: "Apply"
//! reloads the page); once hydrated every change rewrites the URL at once and the results on
//! screen re-rank in the browser, without searching again, except for query expansion and
//! database augmentation, which change what is searched and so search again (one request per
//! result shown).

use crate::types::{Decider, Tuning, MAX_K};
use leptos::prelude::*;
use leptos_router::{
    hooks::{use_location, use_navigate, use_query_map},
    NavigateOptions,
};

/// A tuning as the optional arguments of a server function (the URL names; absent: the
/// server's default). Values that do not parse are the caller's 4xx, naming the field.
#[derive(Default)]
pub struct TuningArgs {
    pub t: Option<f32>,
    pub rel: Option<bool>,
    pub conf: Option<f32>,
    pub k: Option<usize>,
    pub mode: Option<String>,
    pub rename: Option<String>,
    pub ignore: Option<String>,
    pub qe: Option<usize>,
    pub qa: Option<f32>,
    pub dba: Option<usize>,
    pub da: Option<f32>,
    pub by: Option<String>,
}

impl TuningArgs {
    /// Every field of `t`.
    pub fn of(t: Tuning) -> Self {
        Self {
            t: Some(t.threshold),
            rel: Some(t.relative),
            conf: Some(t.min_confidence),
            k: Some(t.k),
            mode: Some(t.mode.as_str().to_string()),
            rename: Some(t.rename),
            ignore: Some(t.ignore),
            qe: Some(t.qe),
            qa: Some(t.qe_alpha),
            dba: Some(t.dba),
            da: Some(t.dba_alpha),
            by: Some(t.by.as_str().to_string()),
        }
    }

    /// The tuning, validated: fields absent are `defaults`'.
    pub fn tuning(
        self,
        defaults: &Tuning,
    ) -> Result<(Tuning, crate::vote::VoteConfig), crate::errors::ApiError> {
        let raw = |key: &str| -> Option<String> {
            match key {
                "t" => self.t.map(|v| v.to_string()),
                "rel" => self.rel.map(|v| u8::from(v).to_string()),
                "conf" => self.conf.map(|v| v.to_string()),
                "k" => self.k.map(|v| v.to_string()),
                "mode" => self.mode.clone(),
                "rename" => self.rename.clone(),
                "ignore" => self.ignore.clone(),
                "qe" => self.qe.map(|v| v.to_string()),
                "qa" => self.qa.map(|v| v.to_string()),
                "dba" => self.dba.map(|v| v.to_string()),
                "da" => self.da.map(|v| v.to_string()),
                "by" => self.by.clone(),
                _ => None,
            }
        };
        for key in Tuning::KEYS {
            if let Some(v) = raw(key) {
                Tuning::check_raw(key, &v)?;
            }
        }
        let tuning = Tuning::from_query(raw, defaults);
        let cfg = tuning.validate()?;
        Ok((tuning, cfg))
    }
}

const INPUT_CLASS: &str = "w-full rounded border border-slate-300 px-2 py-1 text-sm";
const LABEL_CLASS: &str = "block text-xs font-medium uppercase tracking-wide text-slate-500";

/// The tuning in the current URL, falling back to `defaults` field by field.
pub fn use_tuning(defaults: Tuning) -> Memo<Tuning> {
    let query = use_query_map();
    Memo::new(move |_| query.with(|q| Tuning::from_query(|k| q.get(k), &defaults)))
}

/// The tuning controls.
#[component]
pub fn TuningPanel(tuning: Memo<Tuning>) -> impl IntoView {
    let navigate = use_navigate();
    let location = use_location();
    // Rewrites the URL with one field changed; the memo above picks it up.
    let update = move |change: &dyn Fn(&mut Tuning)| {
        let mut t = tuning.get_untracked();
        change(&mut t);
        navigate(
            &format!("{}?{}", location.pathname.get_untracked(), t.to_query()),
            NavigateOptions {
                replace: true,
                scroll: false,
                ..Default::default()
            },
        );
    };
    let value = |ev: &leptos::ev::Event| event_target_value(ev);
    let num = move |ev: &leptos::ev::Event| value(ev).trim().parse::<f32>().ok();
    let error = move || tuning.get().validate().err();
    let input_class = INPUT_CLASS;
    let label_class = LABEL_CLASS;

    // Without JavaScript "Apply" submits the form (a page load with the new query). Once
    // hydrated, a submission (Enter in a field) must not reload the page and lose what is on
    // screen: the URL is rewritten from the form's fields instead.
    let on_submit = {
        let navigate = use_navigate();
        let location = use_location();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            #[cfg(feature = "hydrate")]
            {
                use wasm_bindgen::JsCast;
                let Some(form) = ev
                    .target()
                    .and_then(|t| t.dyn_into::<web_sys::HtmlFormElement>().ok())
                else {
                    return;
                };
                let Ok(data) = web_sys::FormData::new_with_form(&form) else {
                    return;
                };
                let t = Tuning::from_query(|k| data.get(k).as_string(), &tuning.get_untracked());
                navigate(
                    &format!("{}?{}", location.pathname.get_untracked(), t.to_query()),
                    NavigateOptions {
                        replace: true,
                        scroll: false,
                        ..Default::default()
                    },
                );
            }
            #[cfg(not(feature = "hydrate"))]
            let _ = (&navigate, &location);
        }
    };

    view! {
        <form
            method="get"
            class="space-y-3 rounded-lg border border-slate-200 bg-white p-4"
            data-testid="tuning"
            on:submit=on_submit
        >
            <h2 class="text-sm font-semibold">"Tuning"</h2>
            <div>
                <label class=label_class for="t">"Similarity threshold"</label>
                <div class="flex items-center gap-2">
                    <input
                        type="range"
                        min="0"
                        max="1"
                        step="0.01"
                        class="flex-1"
                        aria-label="Similarity threshold slider"
                        prop:value=move || tuning.get().threshold.to_string()
                        on:input={
                            let update = update.clone();
                            move |ev| {
                                if let Some(v) = num(&ev) {
                                    update(&|t| t.threshold = v)
                                }
                            }
                        }
                    />
                    <input
                        id="t"
                        name="t"
                        type="number"
                        min="-1"
                        max="1"
                        step="0.01"
                        class="w-20 rounded border border-slate-300 px-2 py-1 text-sm"
                        data-testid="threshold"
                        prop:value=move || tuning.get().threshold.to_string()
                        on:change={
                            let update = update.clone();
                            move |ev| {
                                if let Some(v) = num(&ev) {
                                    update(&|t| t.threshold = v)
                                }
                            }
                        }
                    />
                </div>
                <select
                    name="rel"
                    class="mt-1 w-full rounded border border-slate-300 px-2 py-1 text-sm"
                    data-testid="relative"
                    on:change={
                        let update = update.clone();
                        move |ev| {
                            let rel = value(&ev) == "1";
                            update(&|t| t.relative = rel)
                        }
                    }
                >
                    <option value="0" selected=move || !tuning.get().relative>
                        "absolute (cosine similarity)"
                    </option>
                    <option value="1" selected=move || tuning.get().relative>
                        "relative to the best match"
                    </option>
                </select>
            </div>
            {number_field(
                NumberSpec {
                    name: "conf",
                    label: "Minimum confidence",
                    testid: "min-confidence",
                    range: ("0", "1".into(), "0.05"),
                    title: None,
                },
                tuning,
                |t| t.min_confidence.to_string(),
                |t, v: f32| t.min_confidence = v,
                update.clone(),
            )}
            <div class="grid grid-cols-2 gap-2">
                {number_field(
                    NumberSpec {
                        name: "k",
                        label: "Neighbours (k)",
                        testid: "k",
                        range: ("1", MAX_K.to_string(), "1"),
                        title: None,
                    },
                    tuning,
                    |t| t.k.to_string(),
                    |t, v: usize| t.k = v,
                    update.clone(),
                )}
                <div>
                    <label class=label_class for="mode">"Vote"</label>
                    <select
                        id="mode"
                        name="mode"
                        class=input_class
                        data-testid="mode"
                        on:change={
                            let update = update.clone();
                            move |ev| {
                                if let Ok(m) = value(&ev).parse() {
                                    update(&|t| t.mode = m)
                                }
                            }
                        }
                    >
                        <option value="majority" selected=move || tuning.get().mode.as_str() == "majority">
                            "majority"
                        </option>
                        <option value="weighted" selected=move || tuning.get().mode.as_str() == "weighted">
                            "similarity-weighted"
                        </option>
                    </select>
                </div>
            </div>
            <div class="grid grid-cols-2 gap-2">
                {number_field(
                    NumberSpec {
                        name: "qe",
                        label: "Query expansion",
                        testid: "qe",
                        range: ("0", MAX_K.to_string(), "1"),
                        title: Some("Neighbours averaged into the query before it is searched again (0: off)"),
                    },
                    tuning,
                    |t| t.qe.to_string(),
                    |t, v: usize| t.qe = v,
                    update.clone(),
                )}
                {number_field(
                    NumberSpec {
                        name: "qa",
                        label: "QE weight α",
                        testid: "qe-alpha",
                        range: ("0", "100".into(), "0.5"),
                        title: Some("Each neighbour weighs its similarity to this power"),
                    },
                    tuning,
                    |t| t.qe_alpha.to_string(),
                    |t, v: f32| t.qe_alpha = v,
                    update.clone(),
                )}
                {number_field(
                    NumberSpec {
                        name: "dba",
                        label: "Database augmentation",
                        testid: "dba",
                        range: ("0", MAX_K.to_string(), "1"),
                        title: Some("Each indexed image is searched as averaged with this many of its nearest others (0: off)"),
                    },
                    tuning,
                    |t| t.dba.to_string(),
                    |t, v: usize| t.dba = v,
                    update.clone(),
                )}
                {number_field(
                    NumberSpec {
                        name: "da",
                        label: "DBA weight α",
                        testid: "dba-alpha",
                        range: ("0", "100".into(), "0.5"),
                        title: Some("Each neighbour weighs its similarity to this power"),
                    },
                    tuning,
                    |t| t.dba_alpha.to_string(),
                    |t, v: f32| t.dba_alpha = v,
                    update.clone(),
                )}
            </div>
            <div>
                <label class=label_class for="by">"Category from"</label>
                <select
                    id="by"
                    name="by"
                    class=input_class
                    data-testid="by"
                    on:change={
                        let update = update.clone();
                        move |ev| {
                            if let Ok(b) = value(&ev).parse() {
                                update(&|t| t.by = b)
                            }
                        }
                    }
                >
                    <option value="best" selected=move || tuning.get().by == Decider::Best>
                        "the better on valid/"
                    </option>
                    <option value="vote" selected=move || tuning.get().by == Decider::Vote>
                        "the neighbours' vote"
                    </option>
                    <option value="head" selected=move || tuning.get().by == Decider::Head>
                        "the trained head"
                    </option>
                </select>
            </div>
            <div>
                <label class=label_class for="rename">"Rename / merge categories"</label>
                <input
                    id="rename"
                    name="rename"
                    type="text"
                    placeholder="fruit=food,vegetables=food"
                    class=input_class
                    data-testid="rename"
                    prop:value=move || tuning.get().rename
                    on:change={
                        let update = update.clone();
                        move |ev| {
                            let v = value(&ev);
                            update(&|t| t.rename = v.clone())
                        }
                    }
                />
            </div>
            <div>
                <label class=label_class for="ignore">"Ignore categories"</label>
                <input
                    id="ignore"
                    name="ignore"
                    type="text"
                    placeholder="insects,birds"
                    class=input_class
                    data-testid="ignore"
                    prop:value=move || tuning.get().ignore
                    on:change={
                        let update = update.clone();
                        move |ev| {
                            let v = value(&ev);
                            update(&|t| t.ignore = v.clone())
                        }
                    }
                />
            </div>
            {move || {
                error()
                    .map(|e| {
                        view! {
                            <p class="text-sm text-red-700" data-testid="tuning-error">
                                {format!("{}: {}", e.field, e.message)}
                            </p>
                        }
                    })
            }}
            <button type="submit" class="rounded bg-slate-800 px-3 py-1 text-sm text-white hover:bg-slate-700">
                "Apply"
            </button>
        </form>
    }
}

/// What a number field of the panel is: its URL name (also its id), label, test id, range
/// (min, max, step) and an optional tooltip.
struct NumberSpec {
    name: &'static str,
    label: &'static str,
    testid: &'static str,
    range: (&'static str, String, &'static str),
    title: Option<&'static str>,
}

/// A labelled number input bound to one tuning field: `read` shows it, `write` stores what
/// was typed once it parses (anything else is ignored, as in the other fields), through
/// `update`, which rewrites the URL.
fn number_field<T: std::str::FromStr + Copy + 'static>(
    spec: NumberSpec,
    tuning: Memo<Tuning>,
    read: fn(&Tuning) -> String,
    write: fn(&mut Tuning, T),
    update: impl Fn(&dyn Fn(&mut Tuning)) + Clone + Send + Sync + 'static,
) -> impl IntoView {
    let (min, max, step) = spec.range;
    view! {
        <div>
            <label class=LABEL_CLASS for=spec.name>{spec.label}</label>
            <input
                id=spec.name
                name=spec.name
                type="number"
                min=min
                max=max
                step=step
                title=spec.title
                class=INPUT_CLASS
                data-testid=spec.testid
                prop:value=move || read(&tuning.get())
                on:change=move |ev| {
                    if let Ok(v) = event_target_value(&ev).trim().parse::<T>() {
                        update(&|t| write(t, v))
                    }
                }
            />
        </div>
    }
}
