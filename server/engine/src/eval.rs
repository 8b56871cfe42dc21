//! Evaluate: how well neighbours find images of the same category. MAP@k (AP@k normalised
//! by min(k, relevant)), k-NN vote accuracy, per-category precision/recall, the confusion
//! matrix and the worst queries; leave-one-out over one set, or queries against an index set.

use crate::expand::Expansion;
use crate::index::{FaissIndex, Filter, VectorIndex};
use crate::vote::{vote, VoteConfig};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// A labelled embedding taking part in an evaluation.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: String,
    pub category: String,
    pub embedding: Vec<f32>,
}

/// One query's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub path: String,
    pub category: String,
    pub predicted: Option<String>,
    pub confidence: f32,
    pub ap: f64,
    /// Neighbour paths and similarities, best first.
    pub neighbours: Vec<(String, f32)>,
}

/// Per-category figures.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryStats {
    pub category: String,
    pub images: usize,
    pub map_at_k: f64,
    pub precision: f64,
    pub recall: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub k: usize,
    pub images: usize,
    pub queries: usize,
    pub map_at_10: f64,
    pub vote_accuracy: f64,
    /// A trained head's accuracy on the same queries (asked for with `--head`): trained on
    /// the index set and scored on the queries, or in 5-fold cross-validation for
    /// leave-one-out.
    pub head_accuracy: Option<f64>,
    pub per_category: Vec<CategoryStats>,
    /// Row = true category, column = predicted (last column: no prediction).
    pub confusion: Confusion,
    /// The lowest-AP queries, worst first.
    pub worst: Vec<QueryResult>,
    #[serde(skip)]
    pub results: Vec<QueryResult>,
}

/// Confusion matrix with its labels.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
}

/// AP@k of one ranked relevance list, normalised by min(k, relevant).
pub fn average_precision(relevance: &[bool], relevant_total: usize, k: usize) -> f64 {
    let denom = k.min(relevant_total);
    if denom == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, &rel) in relevance.iter().take(k).enumerate() {
        if rel {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / denom as f64
}

/// Leave-one-out over `items` (each image queries all others), or, with `queries`, each
/// query against `items` as the index. `cfg.k` neighbours vote; MAP uses 10. With `qe` on,
/// each query is expanded with its first neighbours (never itself) and searched again.
pub fn evaluate(
    items: &[Item],
    queries: Option<&[Item]>,
    cfg: &VoteConfig,
    qe: &Expansion,
) -> Result<Report> {
    evaluate_with(items, queries, cfg, qe, &Expansion::off())
}

/// Database-side augmentation of `items`: each vector replaced by itself plus its `dba.n`
/// nearest other items weighted by similarity^α, L2-normalised ([`Expansion::expand`] applied
/// to the indexed images instead of the query). `nn` holds each item's nearest items, itself
/// among them.
struct Augmented<'a> {
    items: &'a [Item],
    dba: Expansion,
    nn: Vec<Vec<crate::index::Hit>>,
    /// The augmented vectors, row after row.
    data: Vec<f32>,
    /// For each item, the items whose augmentation it is part of.
    used_by: Vec<Vec<usize>>,
}

impl<'a> Augmented<'a> {
    fn new(items: &'a [Item], index: &FaissIndex, data: &[f32], dba: Expansion) -> Result<Self> {
        // One more than needed: leave-one-out drops the query from its neighbours' lists.
        let nn = index.search(data, dba.n + 2, &Filter::all())?;
        let mut used_by = vec![Vec::new(); items.len()];
        let mut me = Self {
            items,
            dba,
            nn,
            data: Vec::with_capacity(data.len()),
            used_by: Vec::new(),
        };
        for j in 0..items.len() {
            for (i, _) in me.others(j, None).take(dba.n) {
                used_by[i].push(j);
            }
            let v = me.vector(j, None);
            me.data.extend(v);
        }
        me.used_by = used_by;
        Ok(me)
    }

    /// Item `j`'s nearest other items and their similarities, `without` left out.
    fn others(&self, j: usize, without: Option<usize>) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.nn[j]
            .iter()
            .map(|h| (h.id as usize, h.score))
            .filter(move |&(i, _)| i != j && Some(i) != without)
    }

    /// Item `j`'s augmented vector, computed with item `without` left out of it.
    fn vector(&self, j: usize, without: Option<usize>) -> Vec<f32> {
        self.dba.expand(
            &self.items[j].embedding,
            self.others(j, without)
                .map(|(i, s)| (self.items[i].embedding.as_slice(), s)),
        )
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// [`evaluate`] with the indexed images augmented by `dba` first (database-side
/// augmentation; off: as they are). Leave-one-out keeps the query out of the database: the
/// items whose augmentation used it are augmented again without it before they are scored.
pub fn evaluate_with(
    items: &[Item],
    queries: Option<&[Item]>,
    cfg: &VoteConfig,
    qe: &Expansion,
    dba: &Expansion,
) -> Result<Report> {
    const MAP_K: usize = 10;
    anyhow::ensure!(!items.is_empty(), "nothing to evaluate: no labelled images");
    let dim = items[0].embedding.len();
    let raw: Vec<f32> = items
        .iter()
        .flat_map(|i| i.embedding.iter().copied())
        .collect();
    let raw_index = FaissIndex::exact(dim, &raw)?;
    let augmented = if dba.is_off() {
        None
    } else {
        Some(Augmented::new(items, &raw_index, &raw, *dba)?)
    };
    let (index, data): (FaissIndex, &[f32]) = match &augmented {
        None => (raw_index, &raw),
        Some(a) => (FaissIndex::exact(dim, &a.data)?, &a.data),
    };
    let leave_one_out = queries.is_none();
    let qs = queries.unwrap_or(items);
    let qdata: Vec<f32> = qs
        .iter()
        .flat_map(|i| i.embedding.iter().copied())
        .collect();
    let depth = MAP_K.max(cfg.k) + usize::from(leave_one_out);
    // The database as query `qi` sees it: in leave-one-out with augmentation, the items
    // built with the query are built again without it and scored exactly.
    let search = |vectors: &[f32]| -> Result<Vec<Vec<crate::index::Hit>>> {
        let Some(a) = augmented.as_ref().filter(|_| leave_one_out) else {
            return index.search(vectors, depth, &Filter::all());
        };
        vectors
            .chunks(dim)
            .enumerate()
            .map(|(qi, q)| {
                let touched = &a.used_by[qi];
                let found = index.search(q, depth + touched.len(), &Filter::all())?;
                let mut hits: Vec<crate::index::Hit> = found
                    .into_iter()
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|h| !touched.contains(&(h.id as usize)))
                    .collect();
                hits.extend(touched.iter().map(|&j| crate::index::Hit {
                    id: j as i64,
                    score: dot(q, &a.vector(j, Some(qi))),
                }));
                hits.sort_by(|x, y| y.score.total_cmp(&x.score));
                hits.truncate(depth);
                Ok(hits)
            })
            .collect()
    };
    let mut hits = search(&qdata)?;
    if !qe.is_off() {
        // Each query with its first neighbours, itself left out; the items stay as they are
        // (in leave-one-out with augmentation, as the query sees them: built without it).
        let row = |j: usize, qi: usize| -> std::borrow::Cow<'_, [f32]> {
            match augmented.as_ref() {
                Some(a) if leave_one_out && a.used_by[qi].contains(&j) => {
                    a.vector(j, Some(qi)).into()
                }
                _ => data[j * dim..(j + 1) * dim].into(),
            }
        };
        let expanded: Vec<f32> = qdata
            .chunks(dim)
            .zip(&hits)
            .enumerate()
            .flat_map(|(qi, (q, hits))| {
                let rows: Vec<(std::borrow::Cow<'_, [f32]>, f32)> = hits
                    .iter()
                    .filter(|h| !(leave_one_out && h.id as usize == qi))
                    .take(qe.n)
                    .map(|h| (row(h.id as usize, qi), h.score))
                    .collect();
                qe.expand(q, rows.iter().map(|(v, s)| (v.as_ref(), *s)))
            })
            .collect();
        hits = search(&expanded)?;
    }

    let mut per_cat_count: BTreeMap<&str, usize> = BTreeMap::new();
    for it in items {
        *per_cat_count.entry(it.category.as_str()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(qs.len());
    for (qi, (q, hits)) in qs.iter().zip(hits).enumerate() {
        let ranked: Vec<(usize, f32)> = hits
            .into_iter()
            .map(|h| (h.id as usize, h.score))
            .filter(|&(id, _)| !(leave_one_out && id == qi))
            .take(depth - usize::from(leave_one_out))
            .collect();
        let relevance: Vec<bool> = ranked
            .iter()
            .map(|&(id, _)| items[id].category == q.category)
            .collect();
        let relevant = per_cat_count.get(q.category.as_str()).copied().unwrap_or(0)
            - usize::from(leave_one_out);
        let ap = average_precision(&relevance, relevant, MAP_K);
        let v = vote(
            ranked
                .iter()
                .map(|&(id, s)| (items[id].category.as_str(), s)),
            cfg,
        );
        results.push(QueryResult {
            path: q.path.clone(),
            category: q.category.clone(),
            predicted: v.category,
            confidence: v.confidence,
            ap,
            neighbours: ranked
                .iter()
                .take(MAP_K)
                .map(|&(id, s)| (items[id].path.clone(), s))
                .collect(),
        });
    }
    Ok(summarise(
        results,
        items.len(),
        cfg.k,
        if leave_one_out {
            "leave-one-out"
        } else {
            "queries"
        },
    ))
}

fn summarise(results: Vec<QueryResult>, images: usize, k: usize, mode: &str) -> Report {
    let n = results.len().max(1) as f64;
    let map = results.iter().map(|r| r.ap).sum::<f64>() / n;
    let correct = |r: &QueryResult| r.predicted.as_deref() == Some(r.category.as_str());
    let acc = results.iter().filter(|r| correct(r)).count() as f64 / n;

    let mut labels: Vec<String> = results.iter().map(|r| r.category.clone()).collect();
    labels.extend(results.iter().filter_map(|r| r.predicted.clone()));
    labels.sort();
    labels.dedup();
    let pos = |c: &str| {
        labels
            .iter()
            .position(|l| l == c)
            .expect("label collected above")
    };
    let mut matrix = vec![vec![0usize; labels.len() + 1]; labels.len()];
    for r in &results {
        let col = r.predicted.as_deref().map_or(labels.len(), pos);
        matrix[pos(&r.category)][col] += 1;
    }
    let per_category = labels
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let rows: Vec<&QueryResult> = results.iter().filter(|r| &r.category == c).collect();
            if rows.is_empty() {
                return None;
            }
            let tp = matrix[i][i] as f64;
            let predicted_as: usize = matrix.iter().map(|row| row[i]).sum();
            Some(CategoryStats {
                category: c.clone(),
                images: rows.len(),
                map_at_k: rows.iter().map(|r| r.ap).sum::<f64>() / rows.len() as f64,
                precision: if predicted_as > 0 {
                    tp / predicted_as as f64
                } else {
                    0.0
                },
                recall: tp / rows.len() as f64,
            })
        })
        .collect();
    let mut worst = results.clone();
    worst.sort_by(|a, b| a.ap.total_cmp(&b.ap).then(a.path.cmp(&b.path)));
    worst.truncate(20);
    Report {
        mode: mode.to_string(),
        k,
        images,
        queries: results.len(),
        map_at_10: map,
        vote_accuracy: acc,
        head_accuracy: None,
        per_category,
        confusion: Confusion { labels, matrix },
        worst,
        results,
    }
}

/// Writes one CSV row per query: path, category, predicted, confidence, ap.
pub fn write_csv(report: &Report, w: impl std::io::Write) -> Result<()> {
    let mut out = crate::csv_safe::Writer::from_writer(w);
    out.write_record(["image", "category", "predicted", "confidence", "ap_at_10"])?;
    for r in &report.results {
        out.write_record([
            r.path.as_str(),
            r.category.as_str(),
            r.predicted.as_deref().unwrap_or(""),
            &format!("{:.4}", r.confidence),
            &format!("{:.4}", r.ap),
        ])?;
    }
    out.flush()?;
    Ok(())
}

/// Projects vectors on their first two principal components (power iteration on the centred
/// data, deflating after the first), for the dashboard's embedding map.
pub fn pca2(vectors: &[&[f32]]) -> Vec<(f32, f32)> {
    let n = vectors.len();
    let Some(d) = vectors.first().map(|v| v.len()) else {
        return Vec::new();
    };
    let mut mean = vec![0f64; d];
    for v in vectors {
        for (m, x) in mean.iter_mut().zip(v.iter()) {
            *m += *x as f64 / n as f64;
        }
    }
    let centred: Vec<Vec<f64>> = vectors
        .iter()
        .map(|v| v.iter().zip(&mean).map(|(x, m)| *x as f64 - m).collect())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut components: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        // A fixed, non-degenerate start keeps the map stable between runs.
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * (c + 3)) % 7) as f64).collect();
        for _ in 0..100 {
            // w = Xᵀ(X v), with earlier components projected out.
            let xv: Vec<f64> = centred.iter().map(|row| dot(row, &v)).collect();
            let mut w = vec![0f64; d];
            for (row, s) in centred.iter().zip(&xv) {
                for (wi, ri) in w.iter_mut().zip(row) {
                    *wi += ri * s;
                }
            }
            for p in &components {
                let k = dot(&w, p);
                for (wi, pi) in w.iter_mut().zip(p) {
                    *wi -= k * pi;
                }
            }
            let norm = dot(&w, &w).sqrt();
            if norm < 1e-12 {
                break;
            }
            v = w.into_iter().map(|x| x / norm).collect();
        }
        components.push(v);
    }
    centred
        .iter()
        .map(|row| {
            (
                dot(row, &components[0]) as f32,
                dot(row, &components[1]) as f32,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap_is_normalised_by_min_k_relevant() {
        assert_eq!(average_precision(&[true, true], 2, 10), 1.0);
        assert_eq!(average_precision(&[false, true], 1, 10), 0.5);
        // 1/1 + 2/3 over min(10, 4) = 4
        assert!(
            (average_precision(&[true, false, true], 4, 10) - (1.0 + 2.0 / 3.0) / 4.0).abs()
                < 1e-12
        );
        assert_eq!(average_precision(&[true; 12], 30, 10), 1.0);
        assert_eq!(average_precision(&[], 0, 10), 0.0);
    }

    fn item(path: &str, cat: &str, v: [f32; 2]) -> Item {
        let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
        Item {
            path: path.into(),
            category: cat.into(),
            embedding: vec![v[0] / n, v[1] / n],
        }
    }

    /// q's second category-mate a2 is farther from q than b is, but near q's first mate a1:
    /// expanded by a1 (and not by itself), q finds a2 before b.
    #[test]
    fn query_expansion_finds_the_neighbours_of_neighbours() {
        let v3 = |p: &str, c: &str, v: [f32; 3]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            Item {
                path: p.into(),
                category: c.into(),
                embedding: v.iter().map(|x| x / n).collect(),
            }
        };
        let items = vec![
            v3("q", "a", [1.0, 0.0, 0.0]),
            v3("a1", "a", [0.8, 0.6, 0.0]),
            v3("a2", "a", [0.28, 0.96, 0.0]),
            v3("b", "b", [0.5, 0.0, 0.866]),
            v3("b2", "b", [0.1, 0.0, 0.995]),
        ];
        let cfg = VoteConfig::default();
        let ap_of_q = |qe: Expansion| {
            let r = evaluate(&items, None, &cfg, &qe).unwrap();
            let q = r.results.iter().find(|r| r.path == "q").unwrap().clone();
            (q.ap, q.neighbours)
        };
        let (plain, order) = ap_of_q(Expansion::off());
        assert!((plain - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9, "{order:?}");
        let (expanded, order) = ap_of_q(Expansion { n: 1, alpha: 0.0 });
        assert_eq!(expanded, 1.0, "{order:?}");
        assert!(
            order.iter().all(|(p, _)| p != "q"),
            "a query never finds itself"
        );
        // Queries against the items (not leave-one-out) expand the same way.
        let q = vec![items[0].clone()];
        let r = evaluate(&items[1..], Some(&q), &cfg, &Expansion { n: 1, alpha: 0.0 }).unwrap();
        assert_eq!(r.results[0].ap, 1.0);
    }

    /// Database-side augmentation, left out for leave-one-out: each query sees the database
    /// augmented as if it had never been indexed, which is the split evaluation of that query
    /// against the other items, query for query; and augmentation changes the rankings.
    #[test]
    fn augmentation_leaves_the_query_out_of_the_database() {
        let mut s = 7u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let items: Vec<Item> = (0..30)
            .map(|i| {
                let mut v: Vec<f32> = (0..6).map(|_| noise()).collect();
                v[i % 3] += 0.6;
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                Item {
                    path: format!("i{i}"),
                    category: format!("c{}", i % 3),
                    embedding: v.iter().map(|x| x / n).collect(),
                }
            })
            .collect();
        let cfg = VoteConfig::default();
        let dba = Expansion { n: 2, alpha: 1.0 };
        for qe in [Expansion::off(), Expansion { n: 1, alpha: 3.0 }] {
            let loo = evaluate_with(&items, None, &cfg, &qe, &dba).unwrap();
            for (qi, got) in loo.results.iter().enumerate() {
                let others: Vec<Item> = items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != qi)
                    .map(|(_, it)| it.clone())
                    .collect();
                let q = [items[qi].clone()];
                let want = evaluate_with(&others, Some(&q), &cfg, &qe, &dba).unwrap();
                let want = &want.results[0];
                assert_eq!(got.path, want.path);
                assert!((got.ap - want.ap).abs() < 1e-9, "{qi}: {got:?} vs {want:?}");
                for ((p, s), (wp, ws)) in got.neighbours.iter().zip(&want.neighbours) {
                    assert!(
                        p == wp && (s - ws).abs() < 1e-5,
                        "{qi}: {got:?} vs {want:?}"
                    );
                }
            }
        }
        let plain = evaluate(&items, None, &cfg, &Expansion::off()).unwrap();
        let augmented = evaluate_with(&items, None, &cfg, &Expansion::off(), &dba).unwrap();
        assert!(
            plain
                .results
                .iter()
                .zip(&augmented.results)
                .any(|(a, b)| a.neighbours != b.neighbours),
            "augmentation changed no ranking"
        );
    }

    #[test]
    fn leave_one_out_on_two_clusters() {
        let items = vec![
            item("a1", "a", [1.0, 0.0]),
            item("a2", "a", [1.0, 0.1]),
            item("a3", "a", [1.0, 0.2]),
            item("b1", "b", [0.0, 1.0]),
            item("b2", "b", [0.1, 1.0]),
            item("b3", "b", [0.9, 0.3]), // sits among the a's
        ];
        let cfg = VoteConfig {
            k: 2,
            ..Default::default()
        };
        let r = evaluate(&items, None, &cfg, &Expansion::off()).unwrap();
        assert_eq!((r.images, r.queries), (6, 6));
        assert_eq!(r.vote_accuracy, 5.0 / 6.0);
        let b3 = r.results.iter().find(|q| q.path == "b3").unwrap();
        assert_eq!(b3.predicted.as_deref(), Some("a"));
        assert!(
            b3.neighbours.iter().all(|(p, _)| p != "b3"),
            "a query never finds itself"
        );
        assert_eq!(r.worst[0].path, "b3");
        assert_eq!(r.confusion.labels, vec!["a", "b"]);
        assert_eq!(r.confusion.matrix[1], vec![1, 2, 0]);
        let a = &r.per_category[0];
        assert_eq!((a.category.as_str(), a.recall), ("a", 1.0));
        assert_eq!(a.precision, 3.0 / 4.0);
        let q = [item("q", "b", [0.0, 1.0])];
        let r2 = evaluate(&items, Some(&q), &cfg, &Expansion::off()).unwrap();
        assert_eq!(r2.results[0].ap, 1.0);
    }

    #[test]
    fn pca_finds_the_spread_directions() {
        // Points along x (spread 10) and y (spread 1) in 3-D, plus a constant offset.
        let pts: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let t = i as f32 - 9.5;
                vec![
                    5.0 + t,
                    2.0 + 0.1 * t * if i % 2 == 0 { 1.0 } else { -1.0 },
                    7.0,
                ]
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let xy = super::pca2(&refs);
        assert_eq!(xy.len(), 20);
        // The first coordinate follows x exactly (up to sign), and is centred.
        let sign = (xy[19].0 - xy[0].0).signum();
        for (p, (x, _)) in pts.iter().zip(&xy) {
            assert!((sign * x - (p[0] - 5.0)).abs() < 1e-3, "{x} vs {}", p[0]);
        }
        assert!(xy.iter().map(|p| p.1.abs()).fold(0.0, f32::max) < 2.0);
        assert!(super::pca2(&[]).is_empty());
    }
}
