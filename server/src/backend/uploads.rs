//! The upload pipeline: content hash → cached analysis, or decode → preprocess (on the
//! request's threads) → the batcher's shared forward pass → text (VLM or ImageNet labels) →
//! search; and the upload storage (bytes kept by content hash for the permanent page).

use super::storage;
use super::{internal, lock, ms, now, EngineBackend};
use crate::history::Record;
use app::analyse::FileOutcome;
use app::errors::ApiError;
use app::types::*;
use kadr_engine::batcher::Announced;
use kadr_engine::decode::decode_for;
use kadr_engine::embed::imagenet_class;
use kadr_engine::expand::Rerank;
use kadr_engine::index::Filter;
use std::path::PathBuf;
use std::time::Instant;

/// ImageNet labels shown as the text analysis when no VLM is configured.
const TEXT_LABELS: usize = 5;
/// Categories of the head's guess shown.
const HEAD_TOP: usize = 3;

/// The general kind of a refusal ("corrupt or truncated PNG image: ..." → before the colon).
fn reason_kind(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason).trim()
}

impl EngineBackend {
    /// Analyses the files of one upload at once (so their images share forward passes with
    /// each other and with other uploads), answering in order.
    pub(super) fn analyse_upload(
        &self,
        files: Vec<(String, Result<Vec<u8>, ApiError>)>,
    ) -> Vec<FileOutcome> {
        // One thread per file, at most a batch's worth at a time: each blocks in the batcher
        // until its pass is done (never on rayon's pool, which the pass itself uses).
        let per_round = self.inner.batcher.config().max_batch.max(1);
        let mut out = Vec::with_capacity(files.len());
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            // Every readable file is announced before any is decoded, so the pass waits for
            // the whole round.
            let round: Vec<_> = files
                .by_ref()
                .take(per_round)
                .map(|(name, bytes)| (name, bytes.map(|b| (b, self.inner.batcher.announce()))))
                .collect();
            std::thread::scope(|scope| {
                let handles: Vec<_> = round
                    .into_iter()
                    .map(|(name, file)| {
                        scope.spawn(move || match file {
                            Ok((bytes, ticket)) => self.analyse_one(&name, &bytes, ticket),
                            Err(why) => self.refused(&name, why),
                        })
                    })
                    .collect();
                for h in handles {
                    out.push(h.join().unwrap_or_else(|_| FileOutcome {
                        name: String::new(),
                        analysis: None,
                        error: Some(ApiError::internal("analysing the file failed")),
                        cached: false,
                    }));
                }
            });
        }
        out
    }

    fn analyse_one(&self, name: &str, bytes: &[u8], ticket: Announced) -> FileOutcome {
        match self.analyse_inner(name, bytes, ticket) {
            Ok(o) => o,
            Err(e) => FileOutcome {
                name: name.to_string(),
                analysis: None,
                error: Some(ApiError {
                    field: Some(name.to_string()),
                    ..e
                }),
                cached: false,
            },
        }
    }

    /// Where an uploaded file's bytes are kept.
    fn upload_path(&self, hash: &str) -> PathBuf {
        self.inner.home.join("uploads").join(hash)
    }

    /// The top [`MAX_K`] hits for an embedding among those `filter` lets through, the search
    /// re-ranked by `rr` (query expansion, database-side augmentation).
    fn hits(&self, embedding: &[f32], filter: &Filter, rr: &Rerank) -> Result<Vec<Hit>, ApiError> {
        let found = self
            .inner
            .ws
            .search_reranked(embedding, MAX_K, filter, rr)
            .map_err(internal)?;
        Ok(found.into_iter().map(|n| self.hit(n)).collect())
    }

    /// A neighbour as the web app shows it, its path relative to its folder.
    pub(super) fn hit(&self, n: kadr_engine::workspace::Neighbour) -> Hit {
        Hit {
            hash: n.hash,
            path: self.relative(&n.path),
            split: n.split,
            category: n.category,
            score: n.score,
        }
    }

    /// The analysis of a stored record: searched now (the index may have grown), with
    /// `head`'s guess when given (the space's trained head, [`EngineBackend::head`]).
    pub(super) fn to_analysis(
        &self,
        r: Record,
        filter: &Filter,
        rr: &Rerank,
        head: Option<&kadr_engine::head::Head>,
    ) -> Result<Analysis, ApiError> {
        let t = Instant::now();
        let hits = self.hits(&r.embedding, filter, rr)?;
        let mut timings = r.timings;
        timings.search_ms = ms(t);
        let head = match head {
            None => None,
            Some(h) => h
                .predict_top(&[r.embedding.as_slice()], HEAD_TOP)
                .map_err(|e| internal(format!("the category head failed: {e:#}")))?
                .pop()
                .map(|top| HeadGuess {
                    category: top[0].category.clone(),
                    probability: top[0].probability,
                    top: top
                        .into_iter()
                        .map(|p| ScoredLabel {
                            label: p.category,
                            score: p.probability,
                        })
                        .collect(),
                }),
        };
        Ok(Analysis {
            hash: r.hash,
            name: r.name,
            width: r.width,
            height: r.height,
            hits,
            text: r.text,
            timings,
            created_at: r.created_at,
            indexed_category: r.indexed_category,
            head,
            expansion: rr.qe,
            augmentation: rr.dba,
        })
    }

    /// Decodes, embeds and describes `bytes`; the record is not stored. A file that cannot be
    /// decoded is the caller's 4xx, naming it; the engine failing is a 500. No lock is held
    /// while the forward pass runs.
    fn embed_record(
        &self,
        name: &str,
        hash: &str,
        bytes: &[u8],
        ticket: Announced,
    ) -> Result<Record, ApiError> {
        let ws = &self.inner.ws;
        let t = Instant::now();
        // Decoding is CPU work: a few at a time, whatever the number of uploads in progress,
        // so the images in memory stay bounded too. A large JPEG is decoded reduced, as the
        // index decodes it: to what the backbone needs, or with a VLM to what it captions at;
        // the VLM keeps the image after preprocessing.
        let (pixels, (width, height), img) = {
            let _turn = self.inner.decode_gate.enter();
            let refused = |e: kadr_engine::decode::DecodeError| {
                metrics::counter!("kadr_refused_files_total", "kind" => e.kind()).increment(1);
                ApiError::file(e.status(), name, e.to_string())
            };
            let spec = ws.embedder().preprocess_spec();
            let d =
                decode_for(bytes, self.inner.max_pixels, ws.decode_shorter()).map_err(refused)?;
            let pixels = kadr_engine::preprocess::preprocess(&d.image, &spec);
            let img = ws.vlm().map(|_| kadr_engine::vlm::caption_view(d.image));
            (pixels, (d.width, d.height), img)
        };
        let decode_ms = ms(t);
        let t = Instant::now();
        let (visual, classes) = ticket
            .embed(pixels, TEXT_LABELS)
            .map_err(|e| internal(format!("embedding failed: {e:#}")))?;
        let mut embed_ms = ms(t);
        let names: Vec<&str> = classes
            .iter()
            .filter_map(|&(i, _)| imagenet_class(i))
            .collect();
        let t = Instant::now();
        // EMBEDDING=vlm: the query is the VLM's embedding of the image.
        let vlm_view = img.as_ref().filter(|_| ws.is_vlm_space()).cloned();
        let text = match ws.vlm() {
            Some(vlm) => {
                let img = img.ok_or_else(|| internal("no image for the VLM"))?;
                let mut categories: Vec<String> = ws
                    .store()
                    .counts(ws.embedder().model_id())
                    .map_err(internal)?
                    .into_iter()
                    .map(|(_, c, _)| c)
                    .filter(|c| !c.is_empty())
                    .collect();
                categories.sort();
                categories.dedup();
                // Zero-shot needs something to choose between.
                let mut labels: Vec<ScoredLabel> = if categories.len() >= 2 {
                    vlm.lock()
                        .zero_shot(&img, &categories)
                        .map_err(|e| internal(format!("zero-shot labelling failed: {e:#}")))?
                        .into_iter()
                        .map(|(label, score)| ScoredLabel { label, score })
                        .collect()
                } else {
                    Vec::new()
                };
                labels.sort_by(|a, b| b.score.total_cmp(&a.score));
                labels.truncate(TEXT_LABELS);
                // An indexed image's caption is reused; a new one is made at the size the
                // index captions at, so that a fused query is made like the indexed vectors.
                let caption = ws
                    .caption_of(hash, img)
                    .map_err(|e| internal(format!("captioning failed: {e:#}")))?;
                TextAnalysis {
                    source: TextSource::Vlm,
                    caption,
                    labels,
                }
            }
            None => TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: classes
                    .iter()
                    .filter_map(|&(i, p)| {
                        imagenet_class(i).map(|l| ScoredLabel {
                            label: l.to_string(),
                            score: p,
                        })
                    })
                    .collect(),
            },
        };
        let text_ms = ms(t);
        // In a fused space the query is fused the way the index was: with the image's text
        // (with a VLM its caption, then the labels).
        let t = Instant::now();
        let embedding = match (vlm_view, ws.fusion()) {
            (Some(view), _) => ws
                .vlm_vector_of(hash, view)
                .map_err(|e| internal(format!("VLM embedding failed: {e:#}")))?
                .ok_or_else(|| internal("not a VLM space"))?,
            (None, None) => visual,
            (None, Some(_)) => {
                let labels = kadr_engine::fusion::image_text(&names);
                ws.fuse_query(&visual, text.caption.as_deref(), labels.as_deref())
                    .map_err(|e| internal(format!("fusing the text failed: {e:#}")))?
            }
        };
        embed_ms += ms(t);
        Ok(Record {
            hash: hash.to_string(),
            name: name.to_string(),
            width,
            height,
            embedding,
            text,
            timings: StageTimings {
                decode_ms,
                embed_ms,
                text_ms,
                ..Default::default()
            },
            created_at: now(),
            indexed_category: None,
        })
    }

    fn refused(&self, name: &str, error: ApiError) -> FileOutcome {
        if error.status < 500 {
            if let Ok(h) = self.inner.history.lock() {
                if let Err(e) = h.refuse(name, reason_kind(&error.message)) {
                    tracing::error!("recording a refusal: {e:#}");
                }
            }
        }
        FileOutcome {
            name: name.to_string(),
            analysis: None,
            error: Some(ApiError {
                field: Some(name.to_string()),
                ..error
            }),
            cached: false,
        }
    }

    fn analyse_inner(
        &self,
        name: &str,
        bytes: &[u8],
        ticket: Announced,
    ) -> Result<FileOutcome, ApiError> {
        if bytes.is_empty() {
            metrics::counter!("kadr_refused_files_total", "kind" => "empty").increment(1);
            return Ok(self.refused(name, ApiError::file(422, name, "empty file")));
        }
        let hash = blake3::hash(bytes).to_hex().to_string();
        let cached = lock(&self.inner.history)?
            .get(self.model(), &hash)
            .map_err(internal)?;
        if let Some(record) = cached {
            let mut analysis = self.to_analysis(
                record,
                &Filter::all(),
                &self.inner.defaults.tuning.rerank(),
                self.head().as_deref(),
            )?;
            // The name the user gave this time.
            analysis.name = name.to_string();
            return Ok(FileOutcome {
                name: name.to_string(),
                analysis: Some(analysis),
                error: None,
                cached: true,
            });
        }
        let record = match self.embed_record(name, &hash, bytes, ticket) {
            Ok(r) => r,
            Err(why) => return Ok(self.refused(name, why)),
        };
        metrics::counter!("kadr_images_embedded_total", "source" => "upload").increment(1);
        // Keep the bytes for the permanent page; write-then-rename so no half file is served.
        let path = self.upload_path(&hash);
        if !path.exists() {
            let dir = path.parent().expect("uploads folder");
            std::fs::create_dir_all(dir).map_err(storage)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(storage)?;
            std::io::Write::write_all(&mut tmp, bytes).map_err(storage)?;
            tmp.persist(&path).map_err(|e| storage(e.error))?;
        }
        lock(&self.inner.history)?
            .put(self.model(), &record)
            .map_err(storage)?;
        Ok(FileOutcome {
            name: name.to_string(),
            analysis: Some(self.to_analysis(
                record,
                &Filter::all(),
                &self.inner.defaults.tuning.rerank(),
                self.head().as_deref(),
            )?),
            error: None,
            cached: false,
        })
    }

    /// The file behind content `hash`: an upload or an indexed image.
    pub fn image_file(&self, hash: &str) -> Result<PathBuf, ApiError> {
        let upload = self.upload_path(hash);
        if upload.is_file() {
            return Ok(upload);
        }
        let row = self
            .inner
            .ws
            .store()
            .row_by_hash(&self.inner.visual_model, hash)
            .map_err(internal)?;
        row.map(|(r, _)| PathBuf::from(r.path))
            .ok_or_else(|| ApiError::not_found(format!("no image with hash {hash}")))
    }

    /// Largest image this server decodes (`MAX_PIXELS`).
    pub fn max_pixels(&self) -> u64 {
        self.inner.max_pixels
    }

    /// Folder for cached thumbnails.
    pub fn thumbs_dir(&self) -> PathBuf {
        self.inner.home.join("thumbs")
    }

    /// The analyses of `hashes`, in order, with hits among what `filter` lets through;
    /// unknown ones are an error naming them.
    pub fn analyses(
        &self,
        hashes: &[String],
        filter: &Filter,
        rr: &Rerank,
    ) -> Result<Vec<Analysis>, ApiError> {
        hashes
            .iter()
            .map(|h| self.analysis_of(h, filter, rr))
            .collect()
    }

    /// A stored analysis of `hash`, searched again now; `None` when there is none.
    pub(super) fn stored_analysis(
        &self,
        hash: &str,
        filter: &Filter,
        rr: &Rerank,
    ) -> Result<Option<Analysis>, ApiError> {
        let record = lock(&self.inner.history)?
            .get(self.model(), hash)
            .map_err(internal)?;
        record
            .map(|r| self.to_analysis(r, filter, rr, self.head().as_deref()))
            .transpose()
    }

    /// The analysis of `hash`: stored, or (an indexed image seen for the first time) made now.
    pub(super) fn analysis_of(
        &self,
        hash: &str,
        filter: &Filter,
        rr: &Rerank,
    ) -> Result<Analysis, ApiError> {
        if let Some(a) = self.stored_analysis(hash, filter, rr)? {
            return Ok(a);
        }
        // An indexed image: analyse its file (once) so it gets a page like any upload.
        let row = self
            .inner
            .ws
            .store()
            .row_by_hash(&self.inner.visual_model, hash)
            .map_err(internal)?;
        let Some((row, _)) = row else {
            return Err(ApiError::not_found(format!(
                "nothing analysed or indexed has hash {hash}"
            )));
        };
        let bytes = std::fs::read(&row.path)
            .map_err(|e| ApiError::not_found(format!("{} is gone: {e}", row.path)))?;
        let ticket = self.inner.batcher.announce();
        let mut record = self.embed_record(&self.relative(&row.path), hash, &bytes, ticket)?;
        record.indexed_category = Some(row.category);
        lock(&self.inner.history)?
            .put(self.model(), &record)
            .map_err(internal)?;
        self.to_analysis(record, filter, rr, self.head().as_deref())
    }
}
