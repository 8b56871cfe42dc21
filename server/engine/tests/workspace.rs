//! The workspace end to end with a real (tiny) ConvNeXt, real FAISS and real SQLite:
//! incremental indexing, reopening, replacing, removing, and recovery from a stale index;
//! and the fused space with the real EfficientNet-Lite0 and all-MiniLM-L6-v2.

use kadr_testkit as common;

use candle_core::Device;
use kadr_engine::dataset::scan;
use kadr_engine::embed::Embedder;
use kadr_engine::expand::{Expansion, Rerank};
use kadr_engine::fusion::Fusion;
use kadr_engine::index::{Filter, IndexKind};
use kadr_engine::text::TextEmbedder;
use kadr_engine::workspace::Workspace;
use std::path::Path;

fn open(home: &Path, weights: &Path, kind: IndexKind) -> Workspace {
    let e = Embedder::load("convnext_test", weights, Device::Cpu, 4).unwrap();
    Workspace::open_with(home, e, kind).unwrap()
}

#[test]
fn index_search_reopen_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 4);
    std::fs::write(data.join("red/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let home = tmp.path().join("home");
    let files = scan(&data).unwrap();
    assert_eq!(files.len(), 13);

    let ws = open(&home, &weights, IndexKind::Flat);
    let r = ws.index_files(&files, 5, &|_| {}).unwrap();
    assert_eq!(
        (r.embedded, r.reused, r.skipped, r.failed.len()),
        (12, 0, 0, 1)
    );
    assert!(r.failed[0].0.ends_with("broken.png"));
    assert_eq!(ws.len(), 12);

    let q_path = data.join("green/2.png");
    let q = ws.embed_bytes(&std::fs::read(&q_path).unwrap()).unwrap();
    let hits = ws.search(&q, 5, &Filter::all()).unwrap();
    assert!(hits[0].path.ends_with("green/2.png"));
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert_eq!(hits[0].category, "green");
    drop(ws);

    // Reopening gives identical results, and nothing is embedded twice.
    let ws = open(&home, &weights, IndexKind::Flat);
    assert_eq!(ws.search(&q, 5, &Filter::all()).unwrap(), hits);
    let r = ws.index_files(&files, 5, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.skipped), (0, 12));

    // Same content at a new path reuses the embedding; a changed file replaces its row.
    std::fs::copy(&q_path, data.join("green/copy.png")).unwrap();
    common::synthetic_png(&data.join("red/0.png"), 2, 9);
    let r = ws.index_files(&scan(&data).unwrap(), 5, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.reused, r.skipped), (1, 1, 11));
    assert_eq!(ws.len(), 13);
    assert_eq!(
        ws.remove_paths(&[data
            .join("green/copy.png")
            .canonicalize()
            .unwrap()
            .to_string_lossy()
            .into()])
            .unwrap(),
        1
    );
    assert_eq!(ws.len(), 12);
    let after = ws.search(&q, 5, &Filter::all()).unwrap();
    drop(ws);

    // A damaged index file is rebuilt from the store with the same results.
    for f in std::fs::read_dir(&home).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "faiss") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    let ws = open(&home, &weights, IndexKind::Flat);
    assert_eq!(ws.len(), 12);
    assert_eq!(ws.search(&q, 5, &Filter::all()).unwrap(), after);

    // An approximate index over the same store finds the exact match too.
    let hnsw = open(&home, &weights, IndexKind::Hnsw);
    assert_eq!(hnsw.len(), 12);
    assert_eq!(
        hnsw.search(&q, 1, &Filter::all()).unwrap()[0].path,
        after[0].path
    );
}

/// Searches filtered by split and category return only what passes, from inside the index;
/// re-indexing a folder removes the images whose files were deleted and says how many; an IVF
/// index is exact until it has enough vectors and is trained once it has.
#[test]
fn filters_removal_of_deleted_files_and_ivf_training() {
    use kadr_engine::index::{FaissParams, IndexConfig};
    use kadr_engine::jobs::index_folder;
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data.join("train"), &["red", "green", "blue"], 3);
    common::synthetic_dataset(&data.join("test"), &["red", "green", "blue"], 1);
    let home = tmp.path().join("home");
    let e = Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let config = IndexConfig {
        faiss: FaissParams {
            train_min: 10,
            ..FaissParams::of(IndexKind::Ivf)
        },
        ..IndexConfig::faiss(IndexKind::Ivf)
    };
    let ws = Workspace::open_configured(&home, e, None, config).unwrap();
    let (files, r) = index_folder(&ws, &data, 4, &|_, _| {}).unwrap();
    // test/ repeats train/'s first images: their embeddings are reused.
    assert_eq!((files.len(), r.embedded + r.reused, r.removed), (12, 12, 0));
    assert!(
        ws.index_description().starts_with("faiss ivf nlist="),
        "trained once 10 vectors were there: {}",
        ws.index_description()
    );

    let q = ws
        .embed_bytes(&std::fs::read(data.join("test/red/0.png")).unwrap())
        .unwrap();
    let all = ws.search(&q, 12, &Filter::all()).unwrap();
    assert_eq!(all.len(), 12);
    assert!(
        (all[0].score - 1.0).abs() < 1e-4,
        "the image itself comes first"
    );
    let refs = ws.search(&q, 12, &Filter::references()).unwrap();
    assert_eq!(refs.len(), 9, "every train image, no test image");
    assert!(refs.iter().all(|h| h.split == "train"));
    let reds = ws
        .search(&q, 12, &Filter::parse("train", "red,blue"))
        .unwrap();
    assert_eq!(reds.len(), 6);
    assert!(reds
        .iter()
        .all(|h| h.category != "green" && h.split == "train"));
    // The filter is applied before the top k is taken: k=2 still gives two of them.
    assert_eq!(
        ws.search(&q, 2, &Filter::parse("", "green")).unwrap().len(),
        2
    );

    // Delete two files (one a whole category of test/), index again.
    std::fs::remove_file(data.join("train/green/1.png")).unwrap();
    std::fs::remove_dir_all(data.join("test/blue")).unwrap();
    let (files, r) = index_folder(&ws, &data, 4, &|_, _| {}).unwrap();
    assert_eq!(
        (files.len(), r.embedded, r.skipped, r.removed),
        (10, 0, 10, 2)
    );
    assert_eq!(ws.len(), 10);
    let after = ws.search(&q, 12, &Filter::all()).unwrap();
    assert_eq!(after.len(), 10);
    assert!(after
        .iter()
        .all(|h| !h.path.ends_with("green/1.png") && !h.path.contains("test/blue")));
    drop(ws);
    // The store agrees after a reopen (the index is rebuilt or loaded from it).
    let e = Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let ws = Workspace::open_with(&home, e, IndexKind::Flat).unwrap();
    assert_eq!(ws.len(), 10);
}

fn effnet() -> Embedder {
    Embedder::load(
        "tf_efficientnet_lite0",
        &common::effnet_weights(),
        Device::Cpu,
        4,
    )
    .unwrap()
}

fn fusion(weight: f32) -> Fusion {
    let text =
        TextEmbedder::load(&common::minilm_dir(), "all-minilm-l6-v2", Device::Cpu, 8).unwrap();
    Fusion::new(text, weight).unwrap()
}

#[test]
fn fused_space_backfills_indexes_and_searches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 3);
    let files = scan(&data).unwrap();
    let home = tmp.path().join("home");

    // Indexed visually first: the labels are stored, their text embeddings are not.
    let ws = Workspace::open_with(&home, effnet(), IndexKind::Flat).unwrap();
    assert_eq!(ws.index_files(&files, 4, &|_| {}).unwrap().embedded, 9);
    let visual_id = ws.space_id().to_string();
    drop(ws);

    // Opening the fused space embeds those texts, so nothing needs indexing again.
    let ws = Workspace::open_fused(&home, effnet(), Some(fusion(0.8)), IndexKind::Flat).unwrap();
    assert_eq!(ws.len(), 9);
    assert!(
        ws.space_id()
            .starts_with(&format!("fused({visual_id}+all-minilm-l6-v2@")),
        "{}",
        ws.space_id()
    );
    assert!(ws.space_id().ends_with(",w=0.80)"));
    let r = ws.index_files(&files, 4, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.reused, r.skipped), (0, 0, 9));

    // A query is fused the same way as the stored images: an indexed image finds itself.
    let q_path = data.join("green/1.png");
    let q = ws.embed_bytes(&std::fs::read(&q_path).unwrap()).unwrap();
    assert_eq!(q.len(), 1280 + 384);
    let hits = ws.search(&q, 3, &Filter::all()).unwrap();
    assert!(hits[0].path.ends_with("green/1.png"), "{hits:?}");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    let stored = ws.vectors_under("/").unwrap();
    assert_eq!(stored.len(), 9);
    let (_, v) = stored
        .iter()
        .find(|(r, _)| r.path.ends_with("green/1.png"))
        .unwrap();
    let cos: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
    assert!((cos - 1.0).abs() < 1e-4, "{cos}");

    // Another weight is another space, built from the stored vectors without embedding.
    let other = Workspace::open_fused(&home, effnet(), Some(fusion(0.5)), IndexKind::Flat).unwrap();
    assert_ne!(other.space_id(), ws.space_id());
    assert_eq!(other.len(), 9);
    assert_eq!(other.index_files(&files, 4, &|_| {}).unwrap().skipped, 9);
}

/// The tiny VLM from `dir` (a [`common::tiny_qwen2vl_dir`]; its name is part of the id).
fn tiny_vlm(dir: &Path) -> std::sync::Arc<kadr_engine::vlm::Vlm> {
    let vl = kadr_models::vlm::processor::Qwen2Vl::load(dir, &Device::Cpu, candle_core::DType::F32)
        .unwrap();
    std::sync::Arc::new(kadr_engine::vlm::Vlm::new(vl, 4))
}

fn open_captioned(home: &Path, vlm: &std::sync::Arc<kadr_engine::vlm::Vlm>) -> Workspace {
    Workspace::open_with_vlm(
        home,
        effnet(),
        Some(fusion(0.8)),
        Some(vlm.clone()),
        kadr_engine::index::IndexConfig::faiss(IndexKind::Flat),
    )
    .unwrap()
}

/// With a VLM, indexing captions every content once (in batches, two files of the same content
/// in one), stores the captions, and fuses caption + labels; re-indexing and reopening caption
/// nothing, and a query image that is indexed reuses its caption.
#[test]
fn fused_space_captions_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 3);
    std::fs::copy(data.join("red/0.png"), data.join("red/copy.png")).unwrap();
    let files = scan(&data).unwrap();
    assert_eq!(files.len(), 10);
    let home = tmp.path().join("home");

    // Indexed without a VLM first: labels, no captions.
    let ws = Workspace::open_fused(&home, effnet(), Some(fusion(0.8)), IndexKind::Flat).unwrap();
    assert_eq!(ws.index_files(&files, 4, &|_| {}).unwrap().embedded, 10);
    let labels_only = ws.space_id().to_string();
    drop(ws);

    // With the VLM, the space is another one, empty until the images have captions; their
    // embeddings are reused, not computed again.
    let vlm_dir = common::tiny_qwen2vl_dir();
    let vlm = tiny_vlm(&vlm_dir);
    let ws = open_captioned(&home, &vlm);
    assert_ne!(ws.space_id(), labels_only);
    assert!(ws.space_id().contains(vlm.id()), "{}", ws.space_id());
    assert_eq!(ws.len(), 0);
    let r = ws.index_files(&files, 4, &|_| {}).unwrap();
    assert_eq!((r.embedded, r.reused, r.skipped), (0, 10, 0));
    assert_eq!(vlm.captions_made(), 9);
    assert_eq!(ws.len(), 10);
    assert_eq!(ws.store().caption_count(vlm.id()).unwrap(), 9);

    // Each image's text is its caption, then its labels; that text's embedding is stored.
    let text_model = ws.fusion().unwrap().text.model_id().to_string();
    let hash = blake3::hash(&std::fs::read(data.join("green/1.png")).unwrap())
        .to_hex()
        .to_string();
    let caption = ws.store().caption(&hash, vlm.id()).unwrap().unwrap();
    assert!(!caption.trim().is_empty());
    let (_, labels) = ws
        .store()
        .embedding_by_hash(ws.embedder().model_id(), &hash)
        .unwrap()
        .unwrap();
    let text = kadr_engine::fusion::image_text_with(Some(&caption), labels.as_deref()).unwrap();
    assert!(text.starts_with(&caption) && text.ends_with(labels.as_deref().unwrap()));
    assert!(ws
        .store()
        .text_embedding(&hash, &text_model, &text)
        .unwrap()
        .is_some());

    // Nothing is captioned twice: not on re-indexing, not after reopening with a new load.
    let r = ws.index_files(&files, 4, &|_| {}).unwrap();
    assert_eq!(r.skipped, 10);
    assert_eq!(vlm.captions_made(), 9);
    drop(ws);
    let vlm = tiny_vlm(&vlm_dir);
    let ws = open_captioned(&home, &vlm);
    assert_eq!(ws.len(), 10);
    assert_eq!(ws.index_files(&files, 4, &|_| {}).unwrap().skipped, 10);

    // An indexed image as a query: its stored caption, fused like the index, finds itself.
    let q = ws
        .embed_bytes(&std::fs::read(data.join("green/1.png")).unwrap())
        .unwrap();
    assert_eq!(vlm.captions_made(), 0);
    let hits = ws.search(&q, 3, &Filter::all()).unwrap();
    assert!(hits[0].path.ends_with("green/1.png"), "{hits:?}");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);

    // Search by text runs over the captioned texts: the image's own text is its best match.
    let found = ws
        .search_text(
            &kadr_engine::workspace::TextQuery {
                text: text.clone(),
                image: None,
            },
            1,
            &Filter::all(),
        )
        .unwrap();
    assert!((found[0].score - 1.0).abs() < 1e-4, "{found:?}");
}

/// `EMBEDDING=vlm`: the index holds the VLM's pooled hidden states, one per content, made at
/// index time and stored; reopening builds the index from the store without the VLM running,
/// and an indexed image as a query finds itself.
#[test]
fn vlm_space_indexes_pooled_hidden_states() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    std::fs::copy(data.join("red/0.png"), data.join("red/copy.png")).unwrap();
    let files = scan(&data).unwrap();
    let home = tmp.path().join("home");
    let config = kadr_engine::index::IndexConfig::faiss(IndexKind::Flat);
    let open = |vlm: &std::sync::Arc<kadr_engine::vlm::Vlm>| {
        let e = Embedder::load(
            "convnext_test",
            &common::tiny_convnext(tmp.path()),
            Device::Cpu,
            4,
        )
        .unwrap();
        let pool = kadr_engine::vlm::VlmPool::Image;
        Workspace::open_vlm_space(&home, e, vlm.clone(), pool, false, config.clone()).unwrap()
    };
    let vlm_dir = common::tiny_qwen2vl_dir();
    let vlm = tiny_vlm(&vlm_dir);
    let ws = open(&vlm);
    assert!(ws.space_id().starts_with("vlm("), "{}", ws.space_id());
    assert!(ws.space_id().ends_with("/pool=image)"), "{}", ws.space_id());
    let r = ws.index_files(&files, 2, &|_| {}).unwrap();
    assert_eq!(r.embedded + r.reused, 5);
    assert_eq!(ws.len(), 5);
    // No captions asked for: none made.
    assert_eq!(vlm.captions_made(), 0);
    let stored = ws.vectors_under("/").unwrap();
    assert_eq!(stored.len(), 5);
    let width = vlm.lock().model.config().hidden_size;
    assert!(stored.iter().all(|(_, v)| v.len() == width));
    // The copy shares its original's vector: one per content.
    let (a, b) = (
        &stored
            .iter()
            .find(|(r, _)| r.path.ends_with("red/0.png"))
            .unwrap()
            .1,
        &stored
            .iter()
            .find(|(r, _)| r.path.ends_with("red/copy.png"))
            .unwrap()
            .1,
    );
    assert_eq!(a, b);
    drop(ws);

    let ws = open(&tiny_vlm(&vlm_dir));
    assert_eq!(ws.len(), 5);
    assert_eq!(ws.index_files(&files, 2, &|_| {}).unwrap().skipped, 5);
    let q = ws
        .embed_bytes(&std::fs::read(data.join("green/1.png")).unwrap())
        .unwrap();
    let hits = ws.search(&q, 2, &Filter::all()).unwrap();
    assert!(hits[0].path.ends_with("green/1.png"), "{hits:?}");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
}

#[test]
fn fused_space_needs_image_text() {
    // The tiny ConvNeXt's classifier has 10 classes, not ImageNet's: its images have no text.
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let e = Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
    let ws = Workspace::open_fused(
        &tmp.path().join("home"),
        e,
        Some(fusion(0.8)),
        IndexKind::Flat,
    )
    .unwrap();
    let err = ws
        .index_files(&scan(&data).unwrap(), 4, &|_| {})
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("EMBEDDING=fused needs"),
        "{err:#}"
    );
    assert!(ws.is_empty());
}

/// IVF-PQ compares compressed codes; the workspace fetches `rerank` × k candidates and
/// re-scores them against the stored vectors, so its scores are the exact cosines and its
/// neighbours those of an exact search. With re-ranking off the scores are the codes'.
#[test]
fn ivfpq_searches_are_reranked_from_the_store() {
    use kadr_engine::index::{FaissParams, IndexConfig};
    use kadr_engine::jobs::index_folder;
    let tmp = tempfile::tempdir().unwrap();
    let weights = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    // PQ trains 256 centroids per sub-quantiser: over fewer distinct vectors its codes would
    // be exact. 400 distinct images (the four colours the synthetic set has).
    common::synthetic_dataset(&data, &["red", "green", "blue", "yellow"], 100);
    let open = |home: &Path, rerank: usize| {
        let e = Embedder::load("convnext_test", &weights, Device::Cpu, 4).unwrap();
        let config = IndexConfig {
            faiss: FaissParams {
                train_min: 256,
                nprobe: 4,
                ..FaissParams::of(IndexKind::IvfPq)
            },
            rerank,
            ..IndexConfig::faiss(IndexKind::IvfPq)
        };
        Workspace::open_configured(home, e, None, config).unwrap()
    };
    let ws = open(&tmp.path().join("home"), 10);
    index_folder(&ws, &data, 16, &|_, _| {}).unwrap();
    assert!(
        ws.index_description().starts_with("faiss ivfpq nlist="),
        "{}",
        ws.index_description()
    );
    let stored = ws.vectors_under("").unwrap();
    assert_eq!(stored.len(), 400);
    let exact = |q: &[f32]| -> Vec<(String, f32)> {
        let mut s: Vec<(String, f32)> = stored
            .iter()
            .map(|(r, v)| (r.path.clone(), v.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1));
        s.truncate(5);
        s
    };
    let (mut found, mut off_exact) = (0, 0usize);
    let plain = open(&tmp.path().join("home"), 1);
    for (row, q) in stored.iter().step_by(20) {
        let want = exact(q);
        let got = ws.search(q, 5, &Filter::all()).unwrap();
        assert_eq!(got.len(), 5);
        assert!(got[0].score > 0.9999, "{} finds itself first", row.path);
        for h in &got {
            let v = &stored.iter().find(|(r, _)| r.path == h.path).unwrap().1;
            let cos: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
            assert!((h.score - cos).abs() < 1e-5, "re-ranked scores are exact");
        }
        // Rank by rank the exact search's scores (equal images tie, so not its paths).
        found += got
            .iter()
            .zip(&want)
            .filter(|(h, (_, s))| (h.score - s).abs() < 1e-5)
            .count();
        for h in plain.search(q, 5, &Filter::all()).unwrap() {
            let v = &stored.iter().find(|(r, _)| r.path == h.path).unwrap().1;
            let cos: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
            off_exact += usize::from((h.score - cos).abs() > 1e-4);
        }
    }
    assert!(found >= 95, "re-ranked recall@5 {found}/100");
    assert!(
        off_exact > 0,
        "without re-ranking the scores are the codes'"
    );
}

/// Search by text over the real photos of the golden set among synthetic images: the words
/// find the image whose labels say them (EfficientNet-Lite0's labels, all-MiniLM-L6-v2), the
/// filters hold, an example image fused with words scores the fused space's blend, and a
/// visual workspace and a fused one give the same fused scores.
#[test]
fn search_by_text_alone_and_with_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::photos_among_synthetic(&data);
    let files = scan(&data).unwrap();
    let home = tmp.path().join("home");
    let mut ws = Workspace::open_with(&home, effnet(), IndexKind::Flat).unwrap();
    assert_eq!(ws.index_files(&files, 4, &|_| {}).unwrap().embedded, 8);

    // A visual workspace has no text model until it is given one.
    let q = |text: &str| kadr_engine::workspace::TextQuery {
        text: text.into(),
        image: None,
    };
    let err = ws.search_text(&q("a cat"), 3, &Filter::all()).unwrap_err();
    assert!(format!("{err:#}").contains("no text model"), "{err:#}");
    ws.set_text_model(
        || TextEmbedder::load(&common::minilm_dir(), "all-minilm-l6-v2", Device::Cpu, 8),
        0.7,
    )
    .unwrap();

    let top = |text: &str, filter: &Filter| ws.search_text(&q(text), 8, filter).unwrap();
    let hits = top("a cup of espresso", &Filter::all());
    assert!(hits[0].path.ends_with("coffee.png"), "{hits:?}");
    assert_eq!(hits.len(), 8);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let hits = top("a tabby cat", &Filter::all());
    assert!(hits[0].path.ends_with("chelsea.png"), "{hits:?}");
    assert!(hits[0].score > hits[1].score + 0.05, "{hits:?}");
    let hits = top("a tabby cat", &Filter::parse("", "drinks,red"));
    assert!(hits
        .iter()
        .all(|h| h.category == "drinks" || h.category == "red"));
    assert_eq!(hits.len(), 4);
    for bad in ["", "   ", &"x".repeat(1001)] {
        assert!(
            ws.search_text(&q(bad), 3, &Filter::all()).is_err(),
            "{bad:?}"
        );
    }

    // With an example image: the score is the blend of the visual and text cosines.
    let coffee = std::fs::read(data.join("drinks/coffee.png")).unwrap();
    let v = ws.embed_visual_bytes(&coffee).unwrap();
    let with = kadr_engine::workspace::TextQuery {
        text: "a tabby cat".into(),
        image: Some(v.clone()),
    };
    let fused_hits = ws.search_text(&with, 8, &Filter::all()).unwrap();
    let text_hits = top("a tabby cat", &Filter::all());
    let image_hits = ws.search(&v, 8, &Filter::all()).unwrap();
    for h in &fused_hits {
        let cv = image_hits.iter().find(|i| i.id == h.id).unwrap().score;
        let ct = text_hits.iter().find(|t| t.id == h.id).unwrap().score;
        let want = kadr_engine::fusion::blend(cv, ct, 0.7);
        assert!((h.score - want).abs() < 1e-4, "{h:?}: {want}");
    }
    assert!(fused_hits[0].path.ends_with("coffee.png"), "{fused_hits:?}");
    drop(ws);

    // The fused workspace at the same weight gives the same fused scores.
    let fused = Workspace::open_fused(&home, effnet(), Some(fusion(0.7)), IndexKind::Flat).unwrap();
    let again = fused.search_text(&with, 8, &Filter::all()).unwrap();
    assert_eq!(again.len(), fused_hits.len());
    for (a, b) in again.iter().zip(&fused_hits) {
        assert_eq!(a.id, b.id);
        assert!((a.score - b.score).abs() < 1e-4, "{a:?} {b:?}");
    }
    let hits = fused
        .search_text(&q("a cup of espresso"), 3, &Filter::all())
        .unwrap();
    assert!(hits[0].path.ends_with("coffee.png"), "{hits:?}");
}

/// The indexed vectors augmented as `kadr eval --dba` defines it, by brute force: each with
/// its `dba.n` most similar other indexed vectors.
fn brute_force_augmented(vectors: &[f32], dim: usize, dba: &Expansion) -> Vec<Vec<f32>> {
    let rows: Vec<&[f32]> = vectors.chunks(dim).collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    (0..rows.len())
        .map(|i| {
            let mut others: Vec<(usize, f32)> = (0..rows.len())
                .filter(|&j| j != i)
                .map(|j| (j, dot(rows[i], rows[j])))
                .collect();
            others.sort_by(|a, b| b.1.total_cmp(&a.1));
            dba.expand(rows[i], others.iter().map(|&(j, s)| (rows[j], s)))
        })
        .collect()
}

#[test]
fn database_augmentation_is_served_as_eval_defines_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 4);
    // The real backbone: the tiny one maps the synthetic images of a category onto one point.
    let ws = Workspace::open_with(&tmp.path().join("home"), effnet(), IndexKind::Flat).unwrap();
    ws.index_files(&scan(&data).unwrap(), 5, &|_| {}).unwrap();

    let (entries, vectors) = ws.store().all_vectors(ws.embedder().model_id()).unwrap();
    let dim = vectors.len() / entries.len();
    let dba = Expansion { n: 2, alpha: 1.0 };
    let augmented = brute_force_augmented(&vectors, dim, &dba);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let expected = |q: &[f32], category: Option<&str>| -> Vec<(i64, f32)> {
        let mut all: Vec<(i64, f32)> = entries
            .iter()
            .zip(&augmented)
            .filter(|(e, _)| category.is_none_or(|c| e.category == c))
            .map(|(e, a)| (e.id, dot(q, a)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all
    };
    // The best 5 of the whole ranking `want`: the same scores in the same order, and the same
    // ids where the score has no tie.
    let check = |got: &[kadr_engine::workspace::Neighbour], want: &[(i64, f32)]| {
        assert_eq!(got.len(), want.len().min(5));
        for (i, (g, (id, score))) in got.iter().zip(want).enumerate() {
            assert!((g.score - score).abs() < 1e-4, "{got:?} vs {want:?}");
            let tied = want
                .iter()
                .enumerate()
                .any(|(j, w)| j != i && (w.1 - score).abs() < 1e-4);
            assert!(tied || g.id == *id, "{got:?} vs {want:?}");
        }
    };
    let q_path = tmp.path().join("query.png");
    common::synthetic_png(&q_path, 1, 7);
    let q = ws.embed_bytes(&std::fs::read(&q_path).unwrap()).unwrap();

    let rr = Rerank {
        qe: Expansion::off(),
        dba,
    };
    let got = ws.search_reranked(&q, 5, &Filter::all(), &rr).unwrap();
    check(&got, &expected(&q, None));
    let plain = ws.search(&q, 5, &Filter::all()).unwrap();
    assert!(
        plain
            .iter()
            .zip(&got)
            .any(|(p, g)| (p.score - g.score).abs() > 1e-3),
        "the augmented index scores differently from the plain one: {plain:?}"
    );
    // Filters apply to the augmented index as to the plain one.
    let red = ws
        .search_reranked(&q, 5, &Filter::parse("", "red"), &rr)
        .unwrap();
    assert!(red.iter().all(|h| h.category == "red"));
    check(&red, &expected(&q, Some("red")));
    // With query expansion the query takes in its neighbours' augmented vectors.
    let both = Rerank {
        qe: Expansion { n: 1, alpha: 1.0 },
        dba,
    };
    let first = &got[0];
    let mine = entries.iter().position(|e| e.id == first.id).unwrap();
    let expanded = both
        .qe
        .expand(&q, [(augmented[mine].as_slice(), first.score)]);
    let got = ws.search_reranked(&q, 5, &Filter::all(), &both).unwrap();
    check(&got, &expected(&expanded, None));

    // An image indexed later is found: the augmented copy follows the set.
    let later = data.join("green/later.png");
    common::synthetic_png(&later, 2, 11);
    ws.index_files(&scan(&data).unwrap(), 5, &|_| {}).unwrap();
    let v = ws.embed_bytes(&std::fs::read(&later).unwrap()).unwrap();
    let got = ws.search_reranked(&v, 3, &Filter::all(), &rr).unwrap();
    assert!(got[0].path.ends_with("green/later.png"), "{got:?}");
}
