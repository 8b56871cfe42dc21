//! Submit: predictions for a dataset's `test/` images as a competition-style CSV.
//!
//! Columns: `image` (path relative to the dataset folder), `category` (voted; empty when no
//! neighbour voted or confidence was below the minimum), `confidence` (the winner's share of the
//! votes, 0–1), then `neighbour_1`, `score_1`, … `neighbour_10`, `score_10`: the ten most similar
//! reference images (train and valid) and their cosine similarities, best first.

use crate::index::{FaissIndex, Filter, VectorIndex};
use crate::vote::{vote, VoteConfig};
use anyhow::Result;
use serde::Serialize;

/// Neighbours listed per row.
pub const NEIGHBOURS: usize = 10;

/// One prediction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub image: String,
    pub category: Option<String>,
    pub confidence: f32,
    pub neighbours: Vec<(String, f32)>,
}

/// A labelled reference image (path relative to the dataset, category, embedding).
pub struct Reference {
    pub path: String,
    pub category: String,
    pub embedding: Vec<f32>,
}

/// Votes a category for each query against the references.
pub fn predict(
    references: &[Reference],
    queries: &[(String, Vec<f32>)],
    cfg: &VoteConfig,
) -> Result<Vec<Prediction>> {
    anyhow::ensure!(
        !references.is_empty(),
        "no labelled reference images (train/ or valid/) to vote with"
    );
    let dim = references[0].embedding.len();
    let data: Vec<f32> = references
        .iter()
        .flat_map(|r| r.embedding.iter().copied())
        .collect();
    let index = FaissIndex::exact(dim, &data)?;
    let qdata: Vec<f32> = queries.iter().flat_map(|q| q.1.iter().copied()).collect();
    let hits = index.search(&qdata, NEIGHBOURS.max(cfg.k), &Filter::all())?;
    Ok(queries
        .iter()
        .zip(hits)
        .map(|((image, _), hits)| {
            let v = vote(
                hits.iter()
                    .map(|h| (references[h.id as usize].category.as_str(), h.score)),
                cfg,
            );
            Prediction {
                image: image.clone(),
                category: v.category,
                confidence: v.confidence,
                neighbours: hits
                    .iter()
                    .take(NEIGHBOURS)
                    .map(|h| (references[h.id as usize].path.clone(), h.score))
                    .collect(),
            }
        })
        .collect())
}

/// Writes predictions in the documented column layout.
pub fn write_csv(predictions: &[Prediction], w: impl std::io::Write) -> Result<()> {
    let mut out = crate::csv_safe::Writer::from_writer(w);
    let mut header = vec!["image".to_string(), "category".into(), "confidence".into()];
    for i in 1..=NEIGHBOURS {
        header.push(format!("neighbour_{i}"));
        header.push(format!("score_{i}"));
    }
    out.write_record(&header)?;
    for p in predictions {
        let mut rec = vec![
            p.image.clone(),
            p.category.clone().unwrap_or_default(),
            format!("{:.4}", p.confidence),
        ];
        for i in 0..NEIGHBOURS {
            match p.neighbours.get(i) {
                Some((path, s)) => {
                    rec.push(path.clone());
                    rec.push(format!("{s:.4}"));
                }
                None => rec.extend([String::new(), String::new()]),
            }
        }
        out.write_record(&rec)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_documented_columns() {
        let refs = vec![
            Reference {
                path: "train/a/1.png".into(),
                category: "a".into(),
                embedding: vec![1.0, 0.0],
            },
            Reference {
                path: "train/b/2.png".into(),
                category: "b".into(),
                embedding: vec![0.0, 1.0],
            },
        ];
        let cfg = VoteConfig {
            k: 1,
            ..Default::default()
        };
        let preds = predict(&refs, &[("test/x.png".into(), vec![0.6, 0.8])], &cfg).unwrap();
        assert_eq!(preds[0].category.as_deref(), Some("b"));
        let mut buf = Vec::new();
        write_csv(&preds, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), 3 + 2 * NEIGHBOURS);
        assert_eq!(
            &header[..5],
            ["image", "category", "confidence", "neighbour_1", "score_1"]
        );
        assert_eq!(
            lines.next().unwrap(),
            "test/x.png,b,1.0000,train/b/2.png,0.8000,train/a/1.png,0.6000,,,,,,,,,,,,,,,,"
        );
    }

    #[test]
    fn names_that_look_like_formulas_are_written_as_text() {
        let preds = vec![Prediction {
            image: "test/=HYPERLINK(\"http://x\",\"y\").png".into(),
            category: Some("@SUM(1+1)".into()),
            confidence: 0.5,
            neighbours: vec![("+cmd.png".into(), -0.25)],
        }];
        let mut buf = Vec::new();
        write_csv(&preds, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let row = csv::Reader::from_reader(text.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap();
        // The path starts with "test/", so it is harmless as is; the others are prefixed.
        assert_eq!(&row[0], "test/=HYPERLINK(\"http://x\",\"y\").png");
        assert_eq!(&row[1], "'@SUM(1+1)");
        assert_eq!(&row[3], "'+cmd.png");
        assert_eq!(&row[4], "-0.2500", "a negative score stays a number");
    }
}
