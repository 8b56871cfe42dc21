//! `kadr serve` under concurrent uploads, with a tiny real ConvNeXt: the files of an upload
//! share a forward pass (counted in `/metrics`), each still gets its own analysis, a lone
//! upload does not wait, and a stored analysis is answered while uploads are being embedded;
//! with `DYNAMIC_BATCHING=off` every image is a pass of its own.

mod common;

use common::server::Server;
use std::io::Cursor;

fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([
            (x * 2 + seed * 7) as u8,
            (y * 3 + seed) as u8,
            (x ^ y) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `kadr_batch_size_sum` and `_count` from `/metrics`.
fn passes(s: &Server) -> (f64, f64) {
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    (value("kadr_batch_size_sum"), value("kadr_batch_size_count"))
}

fn upload_together(s: &Server, seeds: std::ops::Range<u32>) -> Vec<String> {
    let images: Vec<Vec<u8>> = seeds.map(png).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, b)| {
                scope.spawn(move || {
                    let r = s.upload(&[(&format!("{i}.png"), b)], &[]);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    r.json()[0]["analysis"]["hash"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn big_png() -> Vec<u8> {
    // 20 megapixels: a decode that takes a while, well under the default limits.
    let img = image::RgbImage::from_fn(5000, 4000, |x, y| {
        image::Rgb([(x * y % 251) as u8, (x % 253) as u8, (y % 247) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn concurrent_uploads_share_forward_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 3);

    // One worker that may wait long for announced images.
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[
            ("RATE_LIMIT", "0"),
            ("EMBED_WORKERS", "1"),
            ("MAX_BATCH_SIZE", "8"),
            ("BATCH_WAIT_MS", "5000"),
        ],
    );
    // A lone upload does not wait for company that is not coming.
    let t = std::time::Instant::now();
    let first = upload_together(&s, 0..1);
    assert!(t.elapsed().as_millis() < 4000, "{:?}", t.elapsed());
    assert_eq!(passes(&s), (1.0, 1.0));

    // The six files of one upload are one pass.
    let files: Vec<(String, Vec<u8>)> = (1..7).map(|i| (format!("{i}.png"), png(i))).collect();
    let parts: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let r = s.upload(&parts, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut hashes: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["analysis"]["hash"].as_str().unwrap().to_string())
        .collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 6, "each file got its own analysis");
    assert_eq!(passes(&s), (7.0, 2.0), "one pass for the six files");

    // Separate uploads at once: each embedded once, each its own answer.
    let before = passes(&s);
    let hashes = upload_together(&s, 10..16);
    let after = passes(&s);
    assert_eq!(after.0 - before.0, 6.0);
    assert!(after.1 - before.1 <= 6.0);
    let mut distinct = hashes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6);
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(metrics.contains("kadr_batch_size_mean"), "{metrics}");

    // A stored analysis is a search: answered at once while an upload of a large photo and a
    // small one is being decoded and waited for.
    let big = big_png();
    let small = png(99);
    let (upload_took, get_took) = std::thread::scope(|scope| {
        let up = scope.spawn(|| {
            let t = std::time::Instant::now();
            let r = s.upload(&[("big.png", &big), ("small.png", &small)], &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            t.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        let t = std::time::Instant::now();
        let r = s.get(&format!("/api/v1/analysis?hash={}", first[0]));
        assert_eq!(r.status, 200);
        let get_took = t.elapsed();
        (up.join().unwrap(), get_took)
    });
    assert!(
        get_took * 3 < upload_took,
        "the stored analysis took {get_took:?} beside an upload of {upload_took:?}"
    );
    drop(s);

    // Batching off: one pass per image, whatever arrives together.
    let s = Server::start(
        &tmp.path().join("home2"),
        &w,
        &data,
        &[("RATE_LIMIT", "0"), ("DYNAMIC_BATCHING", "off")],
    );
    let r = s.upload(&parts[..4], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(passes(&s), (4.0, 4.0));
}
