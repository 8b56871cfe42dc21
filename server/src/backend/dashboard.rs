//! The dashboard: figures over everything analysed (voted categories, confidence, time per
//! stage, throughput, refusals) and the view of the last evaluation (per category, confusion,
//! worst queries, a PCA map of the embeddings); the duplicates among the served images.

use super::{internal, lock, ms, now, EngineBackend};
use app::errors::ApiError;
use app::types::*;
use kadr_engine::eval::Report;
use kadr_engine::expand::{Expansion, Rerank};
use kadr_engine::vote::VoteConfig;
use kadr_engine::workspace::Workspace;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// The last evaluation's view, in `KADR_HOME`.
pub const EVAL_FILE: &str = "eval.json";

/// Points on the dashboard's embedding map at most.
const MAP_POINTS: usize = 3000;

impl EngineBackend {
    /// The duplicates among the served folders' stored images (no embedding: what the
    /// folders' indexing stored), names relative to their folder.
    pub(super) fn duplicates(
        &self,
        threshold: f32,
        limit: usize,
    ) -> Result<app::dupes::DupesReport, ApiError> {
        let folders = lock(&self.inner.folders)?.clone();
        // By row id: a folder added inside a served one holds the same rows.
        let mut rows = std::collections::BTreeMap::new();
        for f in &folders {
            let prefix = format!("{}{}", f.to_string_lossy(), std::path::MAIN_SEPARATOR);
            for (row, v) in self.inner.ws.vectors_under(&prefix).map_err(internal)? {
                rows.insert(row.id, (self.relative(&row.path), row, v));
            }
        }
        let mut r = kadr_engine::dupes::find_stored(rows.values(), threshold).map_err(internal)?;
        r.pairs.truncate(limit);
        Ok(r)
    }

    pub(super) fn dashboard_stats(
        &self,
        tuning: &Tuning,
        cfg: &VoteConfig,
    ) -> Result<Stats, ApiError> {
        self.check_categories(cfg)?;
        let rr = tuning.rerank();
        let by = match tuning.by {
            Decider::Best => self.category_choice(cfg)?.by,
            by => by,
        };
        // The head's guesses are only counted when they give the categories: read it once.
        let head = if by == Decider::Head {
            self.head()
        } else {
            None
        };
        let records = lock(&self.inner.history)?
            .all(self.model())
            .map_err(internal)?;
        let mut categories: HashMap<String, u64> = HashMap::new();
        let mut histogram = vec![0u64; 10];
        let mut sums = StageTimings::default();
        let mut per_minute: std::collections::BTreeMap<i64, u64> = Default::default();
        let n = records.len();
        for r in records {
            *per_minute.entry(r.created_at / 60).or_default() += 1;
            sums.decode_ms += r.timings.decode_ms;
            sums.embed_ms += r.timings.embed_ms;
            sums.text_ms += r.timings.text_ms;
            let t = Instant::now();
            let analysis =
                self.to_analysis(r, &kadr_engine::index::Filter::all(), &rr, head.as_deref())?;
            sums.search_ms += ms(t);
            let decision = analysis.decide(&analysis.rank(cfg), cfg, by);
            *categories
                .entry(decision.category.unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
            histogram[((decision.confidence * 10.0) as usize).min(9)] += 1;
        }
        let mean = |v: f32| if n > 0 { v / n as f32 } else { 0.0 };
        let mut categories: Vec<Count> = categories
            .into_iter()
            .map(|(label, count)| Count { label, count })
            .collect();
        categories.sort_by(|a, b| b.count.cmp(&a.count).then(a.label.cmp(&b.label)));
        let eval = std::fs::read(self.inner.home.join(EVAL_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<EvalView>(&b).ok())
            .filter(|e| e.model == self.model())
            .map(|saved| self.live_eval(saved, cfg, &rr, by));
        Ok(Stats {
            analyses: n as u64,
            categories,
            confidence_histogram: histogram,
            mean_timings: StageTimings {
                decode_ms: mean(sums.decode_ms),
                embed_ms: mean(sums.embed_ms),
                search_ms: mean(sums.search_ms),
                text_ms: mean(sums.text_ms),
            },
            throughput: per_minute
                .into_iter()
                .map(|(minute, count)| Count {
                    label: format!("{:02}:{:02}", (minute / 60) % 24, minute % 60),
                    count,
                })
                .collect(),
            errors: lock(&self.inner.history)?
                .refusals()
                .map_err(internal)?
                .into_iter()
                .map(|(label, count)| Count { label, count })
                .collect(),
            eval,
        })
    }

    /// The last evaluation evaluated again from the stored vectors under the page's tuning
    /// (`cfg`, query expansion and database augmentation `rr`, and with `by` the head, a head
    /// trained and scored as `kadr eval --head` does), keeping its mode; as saved when it cannot be (a fusion
    /// sweep, a folder gone). The last one is kept, so reloads with one tuning are free.
    fn live_eval(&self, saved: EvalView, cfg: &VoteConfig, rr: &Rerank, by: Decider) -> EvalView {
        let (qe, dba) = (&rr.qe, &rr.dba);
        let mode = match saved.replay.as_str() {
            "split" => kadr_engine::jobs::EvalMode::Split,
            "loo" => kadr_engine::jobs::EvalMode::LeaveOneOut,
            _ => return saved,
        };
        let with_head = by == Decider::Head;
        let key = format!(
            "{}|{}|{cfg:?}|{rr:?}|{with_head}",
            saved.created_at, saved.folder
        );
        if let Ok(cache) = self.inner.live_eval.lock() {
            if let Some((k, v)) = cache.as_ref() {
                if *k == key {
                    return v.clone();
                }
            }
        }
        let folder = Path::new(&saved.folder);
        let opts = kadr_engine::jobs::EvalOptions {
            vote: cfg.clone(),
            qe: *qe,
            dba: *dba,
            head: with_head.then(kadr_engine::head::HeadConfig::default),
        };
        let ws = &self.inner.ws;
        let view = kadr_engine::jobs::evaluate_stored(ws, folder, mode, &opts)
            .and_then(|r| eval_view(ws, folder, &r));
        match view {
            Ok(v) => {
                let v = EvalView {
                    mode: saved.mode,
                    created_at: saved.created_at,
                    replay: saved.replay,
                    qe: qe.n,
                    qe_alpha: qe.alpha,
                    dba: *dba,
                    tuning: describe(cfg, qe, dba, with_head),
                    ..v
                };
                if let Ok(mut cache) = self.inner.live_eval.lock() {
                    *cache = Some((key, v.clone()));
                }
                v
            }
            Err(e) => {
                tracing::warn!("the last evaluation could not be run again: {e:#}");
                saved
            }
        }
    }

    /// The dashboard's view of an evaluation report of `folder`.
    pub(super) fn eval_view(&self, folder: &Path, report: &Report) -> anyhow::Result<EvalView> {
        eval_view(&self.inner.ws, folder, report)
    }
}

/// A vote configuration (with query expansion, and the head when it was scored) in a few
/// words, for the dashboard.
fn describe(cfg: &VoteConfig, qe: &Expansion, dba: &Expansion, head: bool) -> String {
    let mut s = format!(
        "k {}, {} vote, similarity ≥ {:.2}",
        cfg.k,
        cfg.mode.as_str(),
        cfg.min_similarity
    );
    if let Some(r) = cfg.relative_to_best {
        s.push_str(&format!(", ≥ {r:.2} × the best"));
    }
    if cfg.min_confidence > 0.0 {
        s.push_str(&format!(", confidence ≥ {:.2}", cfg.min_confidence));
    }
    if !cfg.rules.rename.is_empty() || !cfg.rules.ignore.is_empty() {
        s.push_str(", category rules");
    }
    if !qe.is_off() {
        s.push_str(&format!(", query expansion {} (α {})", qe.n, qe.alpha));
    }
    if !dba.is_off() {
        s.push_str(&format!(
            ", database augmentation {} (α {})",
            dba.n, dba.alpha
        ));
    }
    if head {
        s.push_str(", head scored");
    }
    s
}

/// The dashboard's view of an evaluation of `folder` in `ws` (per category, confusion, worst
/// queries, a PCA map of the evaluated vectors): made after a web job and after `kadr eval`.
pub fn eval_view(ws: &Workspace, folder: &Path, report: &Report) -> anyhow::Result<EvalView> {
    let prefix = format!("{}{}", folder.to_string_lossy(), std::path::MAIN_SEPARATOR);
    let rows = ws.vectors_under(&prefix)?;
    let by_path: HashMap<String, (String, Vec<f32>)> = rows
        .into_iter()
        .map(|(r, v)| {
            let rel = Path::new(&r.path)
                .strip_prefix(folder)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or(r.path);
            (rel, (r.hash, v))
        })
        .collect();
    let hash_of = |p: &str| by_path.get(p).map(|h| h.0.clone()).unwrap_or_default();
    // The map: every evaluated query, at most MAP_POINTS of them, evenly spread.
    let step = report.results.len().div_ceil(MAP_POINTS).max(1);
    let sample: Vec<_> = report
        .results
        .iter()
        .step_by(step)
        .filter_map(|q| by_path.get(&q.path).map(|(_, v)| (q, v)))
        .collect();
    let vectors: Vec<&[f32]> = sample.iter().map(|(_, v)| v.as_slice()).collect();
    let xy = kadr_engine::eval::pca2(&vectors);
    Ok(EvalView {
        folder: folder.to_string_lossy().into_owned(),
        mode: report.mode.clone(),
        model: ws.space_id().to_string(),
        images: report.images as u64,
        map_at_10: report.map_at_10,
        vote_accuracy: report.vote_accuracy,
        head_accuracy: report.head_accuracy,
        per_category: report
            .per_category
            .iter()
            .map(|c| CategoryScore {
                category: c.category.clone(),
                images: c.images as u64,
                map_at_10: c.map_at_k,
                precision: c.precision,
                recall: c.recall,
            })
            .collect(),
        confusion_labels: report.confusion.labels.clone(),
        confusion: report
            .confusion
            .matrix
            .iter()
            .map(|r| r.iter().map(|&n| n as u64).collect())
            .collect(),
        worst: report
            .worst
            .iter()
            .map(|q| WorstQuery {
                hash: hash_of(&q.path),
                path: q.path.clone(),
                category: q.category.clone(),
                predicted: q.predicted.clone(),
                ap: q.ap,
            })
            .collect(),
        map: sample
            .iter()
            .zip(xy)
            .map(|((q, _), (x, y))| MapPoint {
                x,
                y,
                category: q.category.clone(),
                path: q.path.clone(),
                correct: q.predicted.as_deref() == Some(q.category.as_str()),
            })
            .collect(),
        created_at: now(),
        replay: match report.mode.as_str() {
            "queries" => "split".into(),
            "leave-one-out" => "loo".into(),
            _ => String::new(),
        },
        qe: 0,
        qe_alpha: 0.0,
        dba: Expansion::off(),
        tuning: String::new(),
    })
}

/// Writes `view` as the last evaluation in `home` (atomically: a crash leaves the old one).
pub fn save_eval(home: &Path, view: &EvalView) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(home)?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec(view)?)?;
    tmp.persist(home.join(EVAL_FILE))?;
    Ok(())
}
