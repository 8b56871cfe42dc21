//! `kadr serve` under concurrent uploads, with a tiny real ConvNeXt: uploads that arrive
//! together share a forward pass (fewer passes than images in `/metrics`), each still gets its
//! own analysis, and a stored analysis is answered while they are being embedded; with
//! `DYNAMIC_BATCHING=off` every image is a pass of its own.

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

#[test]
fn concurrent_uploads_share_forward_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 3);

    // One worker that waits long enough for six simultaneous uploads to join its pass.
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[
            ("RATE_LIMIT", "0"),
            ("EMBED_WORKERS", "1"),
            ("MAX_BATCH_SIZE", "8"),
            ("BATCH_WAIT_MS", "1500"),
        ],
    );
    let first = upload_together(&s, 0..1);
    let before = passes(&s);
    assert_eq!(before, (1.0, 1.0));
    let hashes = upload_together(&s, 1..7);
    let after = passes(&s);
    let (images, count) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(images, 6.0, "every upload embedded once");
    assert!(count < 6.0, "{count} passes for 6 simultaneous uploads");
    let mut distinct = hashes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "each upload got its own analysis");
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(metrics.contains("kadr_batch_size_mean"), "{metrics}");

    // A stored analysis is a search: answered while uploads wait for their pass.
    let t = std::time::Instant::now();
    let (_, waited) = std::thread::scope(|scope| {
        let up = scope.spawn(|| upload_together(&s, 10..12));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let r = s.get(&format!("/api/v1/analysis?hash={}", first[0]));
        assert_eq!(r.status, 200);
        let waited = t0.elapsed();
        (up.join().unwrap(), waited)
    });
    assert!(
        waited < std::time::Duration::from_millis(1000) && t.elapsed().as_millis() >= 1500,
        "the stored analysis took {waited:?} beside a pass that waits 1.5 s"
    );
    drop(s);

    // Batching off: one pass per image, whatever arrives together.
    let s = Server::start(
        &tmp.path().join("home2"),
        &w,
        &data,
        &[("RATE_LIMIT", "0"), ("DYNAMIC_BATCHING", "off")],
    );
    upload_together(&s, 20..24);
    assert_eq!(passes(&s), (4.0, 4.0));
}
