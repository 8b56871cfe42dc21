//! `kadr dupes` on real Tux Paint stamps with the real EfficientNet-Lite0 weights: an untouched
//! copy in `test/` is an exact duplicate leaking across splits, a flipped copy filed under
//! another category and a half-size JPEG copy in `valid/` are near duplicates, and distinct
//! stamps are not. Needs `tuxpaint-stamps-default` and the weights (setup.sh).

mod common;

use common::kadr_effnet as kadr;
use image::ImageFormat;
use kadr_types::dupes::{DupeKind, DupesReport, Leak};
use std::path::Path;

const STAMPS: &str = "/usr/share/tuxpaint/stamps";

fn put(from: &str, to: &Path) -> image::DynamicImage {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(Path::new(STAMPS).join(from), to)
        .unwrap_or_else(|e| panic!("{from}: {e} (is tuxpaint-stamps-default installed?)"));
    image::open(to).unwrap()
}

#[test]
fn exact_near_and_leaking_copies_are_found_and_distinct_stamps_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let chimp = put(
        "animals/mammals/apes/chimp.png",
        &set.join("train/mammals/chimp.png"),
    );
    put(
        "animals/mammals/apes/gorilla.png",
        &set.join("train/mammals/gorilla.png"),
    );
    let apricot = put(
        "food/fruit/Apricot_whole.png",
        &set.join("train/fruit/apricot.png"),
    );
    put(
        "food/fruit/Strawberry2.png",
        &set.join("valid/fruit/strawberry.png"),
    );
    // An untouched copy of the chimp in test/, a flipped one under fruit, and a half-size JPEG
    // of the apricot in valid/ (a large stamp: halving a small one blurs it past the
    // threshold, as bench/dupes.sh measures).
    std::fs::create_dir_all(set.join("test")).unwrap();
    std::fs::copy(set.join("train/mammals/chimp.png"), set.join("test/t1.png")).unwrap();
    chimp
        .fliph()
        .save_with_format(set.join("train/fruit/odd.png"), ImageFormat::Png)
        .unwrap();

    // JPEG has no alpha: flattened onto white first, as kadr decodes the original.
    assert!(apricot.width() >= 300);
    let flat = kadr_engine::decode::decode_limited(
        &std::fs::read(set.join("train/fruit/apricot.png")).unwrap(),
        u64::MAX,
    )
    .unwrap();
    let half = image::imageops::resize(
        &flat,
        flat.width() / 2,
        flat.height() / 2,
        image::imageops::Triangle,
    );
    half.save_with_format(set.join("valid/fruit/small.jpg"), ImageFormat::Jpeg)
        .unwrap();

    let home = tmp.path().join("home");
    let out = kadr(&home, &["dupes", set.to_str().unwrap(), "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: DupesReport = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(r.images, 7);
    let find = |a: &str, b: &str| {
        r.pairs
            .iter()
            .find(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a))
    };
    let exact = find("test/t1.png", "train/mammals/chimp.png").expect("exact pair");
    assert_eq!(exact.kind, DupeKind::Exact);
    assert_eq!(exact.leakage, vec![Leak::Split]);
    let flipped = find("train/fruit/odd.png", "train/mammals/chimp.png")
        .unwrap_or_else(|| panic!("flipped copy not found: {:?}", r.pairs));
    assert_eq!(flipped.kind, DupeKind::Near);
    assert!(flipped.similarity >= r.threshold && flipped.similarity < 1.0);
    assert_eq!(flipped.leakage, vec![Leak::Category]);
    let small = find("train/fruit/apricot.png", "valid/fruit/small.jpg")
        .unwrap_or_else(|| panic!("resized copy not found: {:?}", r.pairs));
    assert_eq!(small.kind, DupeKind::Near);
    assert_eq!(small.leakage, vec![Leak::Split]);
    // The exact pair, both of its files with the flipped copy, the apricot pair; nothing else.
    assert_eq!(r.pairs.len(), 4, "{:?}", r.pairs);
    for other in ["gorilla", "strawberry"] {
        assert!(
            r.pairs
                .iter()
                .all(|p| !p.a.contains(other) && !p.b.contains(other)),
            "{other}: {:?}",
            r.pairs
        );
    }

    // The readable form says the same, and a threshold out of range is a clear error.
    let out = kadr(&home, &["dupes", set.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("7 images: 1 exact and 3 near duplicate pairs"),
        "{text}"
    );
    assert!(text.contains("LEAK: two splits"), "{text}");
    let out = kadr(&home, &["dupes", set.to_str().unwrap(), "--threshold", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threshold must be within 0..1"));
    let out = kadr(&home, &["dupes", tmp.path().join("nope").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn the_api_lists_the_served_duplicates_and_refuses_bad_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data.join("train"), &["red", "green"], 3);
    // One training image copied untouched into test/.
    let from = data
        .join("train/red")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::create_dir_all(data.join("test")).unwrap();
    std::fs::copy(&from, data.join("test/copy.png")).unwrap();
    let s = common::server::Server::start(&tmp.path().join("home"), &w, &data, &[]);

    let r = s.get("/api/v1/dupes");
    assert_eq!(r.status, 200, "{}", r.text());
    let report: DupesReport = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(report.images, 7);
    assert_eq!(report.exact, 1);
    let p = &report.pairs[0];
    let name = format!("train/red/{}", from.file_name().unwrap().to_string_lossy());
    assert_eq!(
        (p.a.as_str(), p.b.as_str()),
        ("test/copy.png", name.as_str())
    );
    assert_eq!(p.kind, DupeKind::Exact);
    assert_eq!(p.leakage, vec![Leak::Split]);
    assert_eq!(p.a_hash, p.b_hash);
    assert_eq!(s.get(&format!("/img/{}?size=thumb", p.a_hash)).status, 200);

    // Every pair at threshold 0, only the first one answered, the counts still whole.
    let all: DupesReport =
        serde_json::from_slice(&s.get("/api/v1/dupes?threshold=0&limit=1").body).unwrap();
    assert_eq!(all.pairs.len(), 1);
    assert!(all.near >= report.near);
    assert_eq!(all.exact, 1);

    for (query, field) in [
        ("threshold=2", "threshold"),
        ("threshold=-0.5", "threshold"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
    ] {
        let r = s.get(&format!("/api/v1/dupes?{query}"));
        assert_eq!(r.status, 422, "{query}: {}", r.text());
        assert_eq!(r.json()["field"].as_str(), Some(field), "{query}");
    }
    let r = s.get("/api/v1/dupes?limit=many");
    assert!((400..500).contains(&r.status), "{}", r.text());
}
