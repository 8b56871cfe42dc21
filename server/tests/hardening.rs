//! The server against bad input, on a real `kadr serve` process: a corpus of crafted files
//! and requests, each answered with the right 4xx JSON error naming the field or file, the
//! server healthy after each and nothing written; then the limits (rate, queue), access
//! control, metrics and logs.

mod common;

use common::server::{multipart, raw_request, Reply, Server};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, Rgba};
use kadr_testkit::{exif_orientation_6, with_app1};
use serde_json::Value;
use std::io::Cursor;
use std::path::Path;

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn rgb(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    }))
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    encode(&rgb(w, h, seed), ImageFormat::Png)
}

fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    encode(&rgb(w, h, seed), ImageFormat::Jpeg)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A valid PNG header claiming `w`×`h` pixels, with no pixel data worth the name.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

fn animated_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..2u8).map(|i| {
            image::Frame::new(ImageBuffer::from_pixel(
                20,
                16,
                Rgba([200, 40 * i, 10, 255]),
            ))
        });
        enc.encode_frames(frames).unwrap();
    }
    out
}

fn png16() -> Vec<u8> {
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(24, 18, |x, y| {
        Rgb([x as u16 * 2000, y as u16 * 3000, 40000])
    });
    encode(&DynamicImage::ImageRgb16(img), ImageFormat::Png)
}

/// What must not change when a request is refused.
#[derive(Debug, PartialEq)]
struct Footprint {
    index_size: u64,
    uploads: usize,
    analyses: u64,
    jobs: usize,
}

fn footprint(s: &Server, home: &Path) -> Footprint {
    let status = s.get("/status");
    assert_eq!(status.status, 200, "{}", status.text());
    let stats = s.get("/api/v1/stats");
    assert_eq!(stats.status, 200, "{}", stats.text());
    let jobs = s.get("/api/v1/job-list");
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    Footprint {
        index_size: status.json()["index_size"].as_u64().unwrap(),
        uploads: std::fs::read_dir(home.join("uploads")).map_or(0, |d| d.count()),
        analyses: stats.json()["analyses"].as_u64().unwrap(),
        jobs: jobs.json().as_array().unwrap().len(),
    }
}

/// A refusal as the API answers it: status, then the JSON error's field and message.
fn expect_error(r: &Reply, status: u16, field: Option<&str>, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["status"].as_u64(), Some(u64::from(status)), "{what}: {v}");
    assert!(
        !v["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: {v}"
    );
    if let Some(f) = field {
        assert_eq!(v["field"].as_str(), Some(f), "{what}: {v}");
    }
    v
}

struct Case {
    what: &'static str,
    status: u16,
    field: Option<String>,
    send: Box<dyn Fn(&Server) -> Reply>,
}

fn file_case(what: &'static str, status: u16, name: &str, bytes: Vec<u8>) -> Case {
    let n = name.to_string();
    Case {
        what,
        status,
        field: Some(name.to_string()),
        send: Box::new(move |s| s.upload(&[(n.as_str(), &bytes)], &[])),
    }
}

fn get_case(what: &'static str, status: u16, field: Option<&str>, path: String) -> Case {
    Case {
        what,
        status,
        field: field.map(String::from),
        send: Box::new(move |s| s.get(&path)),
    }
}

fn job_case(what: &'static str, status: u16, field: Option<&str>, json: String) -> Case {
    Case {
        what,
        status,
        field: field.map(String::from),
        send: Box::new(move |s| s.post_json("/api/v1/jobs", &json, &[])),
    }
}

#[test]
fn bad_input_corpus_is_refused_with_4xx_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let home = tmp.path().join("home");
    let data = tmp.path().join("roots/set");
    common::synthetic_dataset(&data, &["red", "green", "blue"], 3);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("escape")).unwrap();
    let roots = tmp.path().join("roots");
    let mut s = Server::start(
        &home,
        &w,
        &data,
        &[
            ("MAX_UPLOAD_BYTES", "300000"),
            ("MAX_REQUEST_BYTES", "2000000"),
            ("MAX_PIXELS", "1000000"),
            ("RATE_LIMIT", "0"),
            ("DATA_ROOTS", roots.to_str().unwrap()),
        ],
    );
    let before = footprint(&s, &home);
    assert_eq!(before.index_size, 9);

    let good = png(40, 30, 3);
    let j = jpeg(64, 48, 5);
    let hex = "ab".repeat(32);
    let d = data.to_str().unwrap().to_string();
    let mut noise = vec![0u8; 4096];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    let mut cases = vec![
        // Files that are not images, or not ones we read.
        file_case("zero-byte file", 422, "empty.png", vec![]),
        file_case("text named .jpg", 415, "notes.jpg", b"hello, world\n".to_vec()),
        file_case("HTML named .png", 415, "page.png", b"<!DOCTYPE html><html><script>alert(1)</script></html>".to_vec()),
        file_case("PDF", 415, "doc.pdf", b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n".to_vec()),
        file_case("SVG", 415, "vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec()),
        file_case("TIFF", 415, "scan.tif", b"II*\x00\x08\x00\x00\x00\x00\x00".to_vec()),
        file_case("ICO", 415, "favicon.ico", b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00\x68\x04\x00\x00\x16\x00\x00\x00".to_vec()),
        file_case("AVIF/HEIF box", 415, "photo.heic", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf".to_vec()),
        file_case("random bytes", 415, "noise.bin", noise.clone()),
        file_case("ELF executable", 415, "image.png", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec()),
        file_case("ZIP archive", 415, "photos.zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec()),
        // Broken images.
        file_case("truncated PNG", 422, "half.png", good[..good.len() / 2].to_vec()),
        file_case("PNG signature only", 422, "sig.png", b"\x89PNG\r\n\x1a\n".to_vec()),
        file_case("PNG signature and garbage", 422, "garbage.png", [b"\x89PNG\r\n\x1a\n".as_slice(), &noise].concat()),
        file_case("PNG with corrupt pixel data", 422, "flipped.png", {
            let mut b = png(40, 30, 9);
            let n = b.len();
            for x in &mut b[n - 40..n - 20] {
                *x ^= 0x5A;
            }
            b
        }),
        file_case("truncated JPEG", 422, "cut.jpg", j[..j.len() * 2 / 3].to_vec()),
        file_case("JPEG without its end marker", 422, "noeoi.jpg", j[..j.len() - 2].to_vec()),
        file_case("JPEG SOI and garbage", 422, "soi.jpg", [b"\xff\xd8\xff".as_slice(), &noise].concat()),
        file_case("truncated GIF", 422, "cut.gif", { let g = animated_gif(); g[..20].to_vec() }),
        file_case("truncated WebP", 422, "cut.webp", { let w = encode(&rgb(32, 32, 1), ImageFormat::WebP); w[..w.len() / 2].to_vec() }),
        file_case("BMP header only", 422, "hdr.bmp", b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00".to_vec()),
        file_case("zero-sized PNG", 422, "zero.png", png_header_only(0, 0)),
        // Decompression bombs and oversized files.
        file_case("PNG header claiming 50000×50000", 413, "bomb.png", png_header_only(50_000, 50_000)),
        file_case("real 2000×2000 PNG past MAX_PIXELS", 413, "big.png", encode(&DynamicImage::ImageRgb8(ImageBuffer::new(2000, 2000)), ImageFormat::Png)),
        file_case("GIF screen 65535×65535", 413, "huge.gif", {
            let mut g = b"GIF89a\xff\xff\xff\xff\x00\x00\x00".to_vec();
            g.extend_from_slice(b"\x2c\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02\x44\x01\x00\x3b");
            g
        }),
        file_case("file over MAX_UPLOAD_BYTES", 413, "large.png", vec![0x89; 400_000]),
        // File names.
        file_case("name with ../ path", 422, "../../etc/passwd.png", good.clone()),
        file_case("name with a backslash", 422, "..\\windows\\x.png", good.clone()),
        // A raw control character makes the part's headers malformed HTTP: the body is refused
        // (browsers percent-encode such names).
        Case { what: "name with a control character", status: 400, field: None, send: Box::new(move |s| s.upload(&[("bell\u{7}.png", b"x")], &[])) },
        file_case("name with a tab", 422, "tab\tname.png", good.clone()),
        file_case("name of 300 bytes", 422, &format!("{}.png", "n".repeat(296)), good.clone()),
        file_case("name '..'", 422, "..", good.clone()),
    ];
    // Requests.
    cases.extend([
        Case { what: "upload without multipart", status: 415, field: None, send: Box::new(|s| s.post_json("/api/v1/analyse", "{}", &[])) },
        Case { what: "multipart without a boundary", status: 415, field: None, send: Box::new(|s| s.request("POST", "/api/v1/analyse", &[("content-type", "multipart/form-data")], b"--x--\r\n")) },
        Case { what: "multipart with a broken body", status: 400, field: None, send: Box::new(|s| s.request("POST", "/api/v1/analyse", &[("content-type", "multipart/form-data; boundary=b")], b"--b\r\ncontent-disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc")) },
        Case { what: "multipart without files", status: 422, field: Some("files".into()), send: Box::new(|s| {
            let (ct, body) = multipart(&[]);
            s.request("POST", "/api/v1/analyse", &[("content-type", &ct)], &body)
        }) },
        Case { what: "multipart with a text field and no files", status: 422, field: Some("files".into()), send: Box::new(|s| {
            s.request("POST", "/api/v1/analyse", &[("content-type", "multipart/form-data; boundary=b")], b"--b\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nno files\r\n--b--\r\n")
        }) },
        Case { what: "101 files in one request", status: 422, field: Some("files".into()), send: Box::new(|s| {
            let tiny = b"x".to_vec();
            let files: Vec<(String, Vec<u8>)> = (0..101).map(|i| (format!("f{i}.png"), tiny.clone())).collect();
            let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
            s.upload(&refs, &[])
        }) },
        Case { what: "body declared past MAX_REQUEST_BYTES", status: 413, field: None, send: Box::new(|s| {
            raw_request(&s.addr, "POST", "/api/v1/analyse", &[("content-type", "multipart/form-data; boundary=b")], b"--b--\r\n", Some(50_000_000))
        }) },
        get_case("analysis: hash not hex", 422, Some("hash"), "/api/v1/analysis?hash=zzz".into()),
        get_case("analysis: unknown hash", 404, None, format!("/api/v1/analysis?hash={hex}")),
        get_case("analysis: hash missing", 422, None, "/api/v1/analysis".into()),
        get_case("stats: NaN threshold", 422, Some("threshold"), "/api/v1/stats?t=NaN".into()),
        get_case("stats: threshold 2", 422, Some("threshold"), "/api/v1/stats?t=2".into()),
        get_case("stats: negative k", 422, None, "/api/v1/stats?k=-1".into()),
        get_case("stats: k 0", 422, Some("k"), "/api/v1/stats?k=0".into()),
        get_case("stats: k huge", 422, Some("k"), "/api/v1/stats?k=100000".into()),
        get_case("stats: confidence 1.5", 422, Some("min_confidence"), "/api/v1/stats?conf=1.5".into()),
        get_case("stats: infinite confidence", 422, Some("min_confidence"), "/api/v1/stats?conf=inf".into()),
        get_case("stats: unknown vote mode", 422, Some("mode"), "/api/v1/stats?mode=bogus".into()),
        get_case("stats: ignore an unknown category", 422, Some("ignore"), "/api/v1/stats?ignore=unicorns".into()),
        get_case("stats: rename an unknown category", 422, Some("rename"), "/api/v1/stats?rename=unicorns%3Dhorses".into()),
        get_case("stats: malformed rename", 422, Some("rename"), "/api/v1/stats?rename=red".into()),
        get_case("stats: oversized rename", 422, Some("rename"), format!("/api/v1/stats?rename={}", "a".repeat(5000))),
        get_case("export: no hashes", 422, Some("hashes"), "/api/v1/export.csv".into()),
        get_case("export: bad hash", 422, Some("hash"), "/api/v1/export.csv?hashes=xyz".into()),
        get_case("export: bad threshold", 422, Some("t"), format!("/api/v1/export.csv?hashes={hex}&t=abc")),
        get_case("export: unknown parameter", 422, Some("foo"), format!("/api/v1/export.csv?hashes={hex}&foo=1")),
        get_case("export: unknown category", 422, Some("ignore"), format!("/api/v1/export.csv?hashes={hex}&ignore=unicorns")),
        get_case("submission: 1001 hashes", 422, Some("hashes"), format!("/api/v1/submission.csv?hashes={}", vec![hex.clone(); 1001].join(","))),
        get_case("image: not a hash", 422, Some("hash"), "/img/not-a-hash".into()),
        get_case("image: bad size", 422, Some("size"), format!("/img/{hex}?size=huge")),
        get_case("image: unknown hash", 404, None, format!("/img/{hex}")),
        get_case("job: negative id", 422, None, "/api/v1/job?id=-1".into()),
        get_case("job: unknown id", 404, None, "/api/v1/job?id=999".into()),
        job_case("folder outside the roots", 403, None, r#"{"request":{"kind":"add_folder","folder":"/etc"}}"#.into()),
        job_case("folder escaping with ..", 403, None, format!(r#"{{"request":{{"kind":"add_folder","folder":"{d}/../../.."}}}}"#)),
        job_case("folder escaping by symlink", 403, None, format!(r#"{{"request":{{"kind":"add_folder","folder":"{d}/escape"}}}}"#)),
        job_case("missing folder outside the roots", 403, None, r#"{"request":{"kind":"add_folder","folder":"/nonexistent/x"}}"#.into()),
        job_case("relative folder", 422, Some("folder"), r#"{"request":{"kind":"add_folder","folder":"set"}}"#.into()),
        job_case("folder with control characters", 422, Some("folder"), r#"{"request":{"kind":"add_folder","folder":"/tmp/a\u0001b"}}"#.into()),
        job_case("folder of 5000 bytes", 422, Some("folder"), format!(r#"{{"request":{{"kind":"add_folder","folder":"/{}"}}}}"#, "a".repeat(5000))),
        job_case("empty folder", 422, Some("folder"), r#"{"request":{"kind":"add_folder","folder":"  "}}"#.into()),
        job_case("missing folder", 422, Some("folder"), format!(r#"{{"request":{{"kind":"add_folder","folder":"{d}/nope"}}}}"#)),
        job_case("unknown job kind", 422, None, r#"{"request":{"kind":"delete"}}"#.into()),
        job_case("malformed JSON", 422, None, r#"{"request":"#.into()),
    ]);
    assert!(cases.len() >= 40, "{} cases", cases.len());

    for case in &cases {
        let r = (case.send)(&s);
        expect_error(&r, case.status, case.field.as_deref(), case.what);
        assert!(s.alive(), "{}: the server died", case.what);
        assert_eq!(
            footprint(&s, &home),
            before,
            "{}: something was written",
            case.what
        );
    }

    // A refused batch names each file with its own reason, in order.
    let r = s.upload(
        &[("a.txt", b"text"), ("b.png", &good[..10]), ("c.png", &[])],
        &[],
    );
    let v = expect_error(&r, 422, Some("files"), "batch of bad files");
    let details = v["details"].as_array().unwrap();
    let got: Vec<(u64, &str)> = details
        .iter()
        .map(|d| (d["status"].as_u64().unwrap(), d["field"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(415, "a.txt"), (422, "b.png"), (422, "c.png")]);
    assert_eq!(footprint(&s, &home), before);

    // In a mixed batch the good files are analysed and the bad ones refused, each named.
    let r = s.upload(
        &[
            ("good.png", &good),
            ("bad.png", b"nope"),
            ("../x.png", &good),
        ],
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let outcomes = r.json();
    let outcomes = outcomes.as_array().unwrap();
    assert!(outcomes[0]["analysis"].is_object());
    assert_eq!(outcomes[1]["error"]["status"], 415);
    assert_eq!(outcomes[1]["error"]["field"], "bad.png");
    assert_eq!(outcomes[2]["error"]["status"], 422);
    let after = footprint(&s, &home);
    assert_eq!((after.index_size, after.uploads, after.analyses), (9, 1, 1));

    // Images that look unusual but are fine are analysed: animated GIF (first frame), 16-bit
    // PNG, CMYK JPEG, a 64 KB EXIF block of junk, and EXIF orientation applied.
    let cmyk =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cmyk.jpg")).unwrap();
    let junk_exif = with_app1(
        &jpeg(30, 20, 7),
        &[b"Exif\0\0".as_slice(), &[0xAB; 65_000]].concat(),
    );
    let rotated = with_app1(&jpeg(30, 20, 8), &exif_orientation_6());
    let fine: [(&str, Vec<u8>, (u64, u64)); 5] = [
        ("anim.gif", animated_gif(), (20, 16)),
        ("deep.png", png16(), (24, 18)),
        ("cmyk.jpg", cmyk, (40, 30)),
        ("exif-junk.jpg", junk_exif, (30, 20)),
        ("rotated.jpg", rotated, (20, 30)),
    ];
    for (name, bytes, (w, h)) in &fine {
        let r = s.upload(&[(name, bytes)], &[]);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let a = &r.json()[0]["analysis"];
        assert_eq!(
            (a["width"].as_u64(), a["height"].as_u64()),
            (Some(*w), Some(*h)),
            "{name}"
        );
        assert_eq!(a["hits"].as_array().map(Vec::len), Some(9), "{name}");
    }
    assert_eq!(
        footprint(&s, &home).index_size,
        9,
        "uploads never enter the index"
    );

    // Metrics count what happened; logs went to files.
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    let m = m.text();
    for needle in [
        "kadr_http_requests_total{",
        "kadr_http_request_duration_seconds_bucket{",
        "kadr_http_errors_total{kind=\"unsupported_media\"}",
        "kadr_http_errors_total{kind=\"too_large\"}",
        "kadr_refused_files_total{kind=\"corrupt\"}",
        "kadr_images_embedded_total{source=\"upload\"}",
        "kadr_model_load_seconds",
        "kadr_process_resident_memory_bytes",
        "kadr_index_vectors 9",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle}:\n{m}");
    }
    assert!(s.alive());
    drop(s);
    let logs: Vec<_> = std::fs::read_dir(home.join("logs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!logs.is_empty(), "no log file");
    let text = std::fs::read_to_string(logs[0].path()).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["level"].is_string(), "{text}");
}

#[test]
fn keys_guard_writes_and_optionally_reads_and_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let job = r#"{"request":{"kind":"reindex"}}"#;
    let home = tmp.path().join("home");
    let s = Server::start(
        &home,
        &w,
        &data,
        &[
            ("API_KEYS", "key-one-secret, key-two-secret"),
            ("ADMIN_PASSWORD", "pass-word-secret"),
        ],
    );
    // Reads are open; writes need a key.
    assert_eq!(s.get("/api/v1/stats").status, 200);
    let r = s.post_json("/api/v1/jobs", job, &[]);
    expect_error(&r, 401, None, "write without a key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    expect_error(
        &s.post_json("/api/v1/jobs", job, &[("authorization", "Bearer wrong")]),
        401,
        None,
        "wrong key",
    );
    let r = s.post_json(
        "/api/v1/jobs",
        job,
        &[("authorization", "Bearer key-two-secret")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Uploads are reads.
    assert_eq!(s.upload(&[("a.png", &png(20, 20, 1))], &[]).status, 200);

    // The sign-in page sets a session cookie that authorises writes.
    let login = |pw: &str| {
        let body = format!("password={pw}&next=%2Fdataset");
        s.request(
            "POST",
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    };
    let r = login("nope");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("Wrong password"));
    let r = login("pass-word-secret");
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/dataset"));
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    // Wait for the first job, then start another with the cookie.
    for _ in 0..200 {
        let jobs = s.get("/api/v1/job-list").json();
        if jobs[0]["state"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = s.post_json("/api/v1/jobs", job, &[("cookie", &session)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.request("GET", "/logout", &[("cookie", &session)], b"");
    assert_eq!(r.status, 303);
    expect_error(
        &s.post_json("/api/v1/jobs", job, &[("cookie", &session)]),
        401,
        None,
        "after sign-out",
    );
    // A session survives a restart (stored hashed); a signed-out one does not come back.
    let r = login("pass-word-secret");
    let kept = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    drop(s);
    let token = kept.split_once('=').unwrap().1.to_string();
    let stored = std::fs::read(home.join("sessions.sqlite")).unwrap();
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "the session token is stored as it is"
    );
    let s = Server::start(
        &home,
        &w,
        &data,
        &[
            ("API_KEYS", "key-one-secret, key-two-secret"),
            ("ADMIN_PASSWORD", "pass-word-secret"),
        ],
    );
    for _ in 0..200 {
        let jobs = s.get("/api/v1/job-list").json();
        if jobs
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "running")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = s.post_json("/api/v1/jobs", job, &[("cookie", &kept)]);
    assert_eq!(r.status, 200, "signed out by a restart: {}", r.text());
    expect_error(
        &s.post_json("/api/v1/jobs", job, &[("cookie", &session)]),
        401,
        None,
        "a signed-out session after a restart",
    );
    drop(s);

    // With AUTH_READS=key, reads need it too; pages send browsers to the sign-in page.
    let home2 = tmp.path().join("home2");
    let s = Server::start(
        &home2,
        &w,
        &data,
        &[("API_KEYS", "key-one-secret"), ("AUTH_READS", "key")],
    );
    expect_error(&s.get("/api/v1/stats"), 401, None, "read without a key");
    assert_eq!(
        s.request(
            "GET",
            "/api/v1/stats",
            &[("x-api-key", "key-one-secret")],
            b""
        )
        .status,
        200
    );
    let r = s.request("GET", "/dashboard", &[("accept", "text/html")], b"");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login?next=/dashboard"));
    assert_eq!(s.get("/login").status, 200);
    assert_eq!(s.get("/status").status, 200, "the health check stays open");
    let log = s.log.lock().unwrap().clone();
    drop(s);

    // No secret in any log.
    let mut logs = log;
    for h in [&home, &home2] {
        for f in std::fs::read_dir(h.join("logs")).unwrap().flatten() {
            logs.push_str(&std::fs::read_to_string(f.path()).unwrap());
        }
    }
    assert!(logs.contains("failed sign-in"), "{logs}");
    for secret in ["key-one-secret", "key-two-secret", "pass-word-secret"] {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}

#[test]
fn rate_limit_and_busy_queue_answer_429_and_503_only() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[("RATE_LIMIT", "1"), ("RATE_LIMIT_BURST", "3")],
    );
    let statuses: Vec<u16> = (0..6).map(|_| s.get("/api/v1/settings").status).collect();
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    let r = s.get("/api/v1/settings");
    let v = expect_error(&r, 429, None, "over the rate");
    assert!(r.header("retry-after").is_some(), "{v}");
    drop(s);

    // One upload in progress (one worker, one image a pass) and one waiting place: of a burst
    // of 12 uploads at once some must be turned away with 503, the rest answered 200, nothing
    // else, and the server stays up.
    let s = Server::start(
        &tmp.path().join("home2"),
        &w,
        &data,
        &[
            ("RATE_LIMIT", "0"),
            ("EMBED_WORKERS", "1"),
            ("MAX_BATCH_SIZE", "1"),
            ("DYNAMIC_BATCHING", "off"),
            ("QUEUE_DEPTH", "1"),
        ],
    );
    let big: Vec<Vec<u8>> = (0..12).map(|i| png(1600, 1200, 10 + i)).collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = big
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let s = &s;
                scope.spawn(move || {
                    let r = s.upload(&[(&format!("{i}.png"), b)], &[]);
                    if r.status == 503 {
                        assert!(r.header("retry-after").is_some());
                        assert_eq!(r.json()["status"], 503);
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|&c| c == 200 || c == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let busy = statuses.iter().filter(|&&c| c == 503).count();
    assert!(
        busy >= 1,
        "2 places for 12 uploads at once and none turned away: {statuses:?}"
    );
    let m = s.get("/metrics").text();
    let rejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("kadr_queue_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, busy as f64, "{m}");
    assert_eq!(s.get("/status").status, 200);
}

#[test]
fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let get_as = |s: &Server, client: &str| {
        s.request(
            "GET",
            "/api/v1/settings",
            &[("x-forwarded-for", client)],
            b"",
        )
        .status
    };
    // Not trusted: a client cannot get a fresh bucket by writing a new X-Forwarded-For.
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[("RATE_LIMIT", "1"), ("RATE_LIMIT_BURST", "2")],
    );
    let statuses: Vec<u16> = (0..4)
        .map(|i| get_as(&s, &format!("203.0.113.{i}")))
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    drop(s);
    // Behind a trusted proxy (the tests' loopback), each forwarded client has its own bucket,
    // and what a client wrote left of the proxy's entry is not believed.
    let s = Server::start(
        &tmp.path().join("home2"),
        &w,
        &data,
        &[
            ("RATE_LIMIT", "1"),
            ("RATE_LIMIT_BURST", "2"),
            ("TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    );
    let a: Vec<u16> = (0..3).map(|_| get_as(&s, "203.0.113.1")).collect();
    assert_eq!(a, [200, 200, 429]);
    assert_eq!(
        get_as(&s, "203.0.113.2"),
        200,
        "another client behind the proxy"
    );
    assert_eq!(
        get_as(&s, "198.51.100.7, 203.0.113.1"),
        429,
        "a spoofed first hop is not a new client"
    );
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The server's descriptor count once it has settled: the connection of a request just
/// answered may take a moment to be closed on the server's side, and counting it would make
/// the accepted connections look one short.
fn settled_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = open_fds(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits until the server closes `c` (EOF or reset); the seconds it took, or `None` if it is
/// still open after `limit`.
fn closed_within(c: &mut std::net::TcpStream, limit: std::time::Duration) -> Option<f64> {
    use std::io::Read;
    let t = std::time::Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Some(t.elapsed().as_secs_f64()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(t.elapsed().as_secs_f64()),
        }
    }
}

#[test]
fn slow_and_idle_clients_are_dropped_and_the_connection_cap_holds() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[
            ("RATE_LIMIT", "0"),
            ("HEADER_TIMEOUT", "2"),
            ("IDLE_TIMEOUT", "3"),
            ("MAX_CONNECTIONS", "50"),
        ],
    );
    let pid = s.child.id();
    assert_eq!(s.get("/status").status, 200);
    let before = settled_fds(pid);

    // 40 clients send half a request line and then nothing, 9 send nothing at all, and one
    // trickles a byte of headers every 300 ms: 50, the cap.
    let mut held: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"GET /api/v1/sett").unwrap();
            c
        })
        .collect();
    held.extend((0..9).map(|_| TcpStream::connect(&s.addr).unwrap()));
    let mut trickle = TcpStream::connect(&s.addr).unwrap();
    // Until the server has accepted them all.
    let t = Instant::now();
    while open_fds(pid) < before + 50 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = open_fds(pid);
    assert!(during >= before + 50, "{before} → {during} descriptors");
    // The 51st connection is answered at once, with a JSON 503 and Retry-After.
    let r = s.get("/status");
    expect_error(&r, 503, None, "past MAX_CONNECTIONS");
    assert_eq!(r.header("retry-after"), Some("1"));

    let start = Instant::now();
    let trickler = std::thread::spawn(move || {
        let line = b"GET /status HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in line.iter().cycle().take(200) {
            if trickle.write_all(&[*b]).is_err() {
                return Some(start.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    });
    // HEADER_TIMEOUT (2 s) drops the half-sent requests and IDLE_TIMEOUT (3 s) at the latest
    // the silent ones, whatever they do.
    for (i, c) in held.iter_mut().enumerate() {
        let left = Duration::from_secs(5).saturating_sub(start.elapsed());
        assert!(
            closed_within(c, left.max(Duration::from_millis(10))).is_some(),
            "connection {i} still open {:.1} s after the timeouts",
            start.elapsed().as_secs_f64()
        );
    }
    let t = trickler.join().unwrap();
    assert!(
        t.is_some_and(|t| t < 6.0),
        "a client trickling its headers is kept past HEADER_TIMEOUT: {t:?}"
    );
    // Everyone else is served again, and the descriptors are given back.
    assert_eq!(s.get("/status").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let after = open_fds(pid);
    assert!(after <= before + 2, "{before} → {after} descriptors");

    // A kept-alive connection left idle after its answer is closed too.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let t = closed_within(&mut c, Duration::from_secs(6));
    assert!(
        t.is_some_and(|t| t < 4.5),
        "idle keep-alive connection: {t:?}"
    );

    // A client that stops sending an upload's body half-way is dropped after IDLE_TIMEOUT,
    // and its place in the embedding queue is freed.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let (ct, body) = multipart(&[("a.png", &png(40, 30, 1))]);
    c.write_all(
        format!(
            "POST /api/v1/analyse HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&body[..body.len() / 2]).unwrap();
    let t = closed_within(&mut c, Duration::from_secs(8));
    assert!(
        t.is_some_and(|t| (2.5..6.0).contains(&t)),
        "stalled body: {t:?}"
    );
    let r = s.upload(&[("b.png", &png(40, 30, 2))], &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    // A client slow but within HEADER_TIMEOUT is served.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    c.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut c, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn sigterm_stops_accepting_and_exits_once_open_connections_close() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    let mut s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[("RATE_LIMIT", "0"), ("HEADER_TIMEOUT", "3")],
    );
    // An idle kept-alive connection and one stuck half-way through its headers.
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut stuck = TcpStream::connect(&s.addr).unwrap();
    stuck.write_all(b"GET /stat").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let code = loop {
        if let Some(code) = s.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "still running {:.1} s after SIGTERM",
            t.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    assert!(s.log.lock().unwrap().contains("shutting down"));
    drop((idle, stuck));
}

#[test]
fn the_idle_timeout_never_cuts_short_a_request_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    // One request of 100 large images: the server works on it, the connection silent, for
    // longer than IDLE_TIMEOUT.
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[("RATE_LIMIT", "0"), ("IDLE_TIMEOUT", "1")],
    );
    let files: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("{i}.png"), png(2400, 1800, i as u8)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let t = std::time::Instant::now();
    // A connection closed without an answer panics here ("no HTTP answer").
    let r = s.upload(&refs, &[]);
    let took = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(100));
    assert!(
        took > 1.5,
        "the upload was answered in {took:.2} s: it did not outlast IDLE_TIMEOUT"
    );
}

#[test]
fn names_are_inert_in_pages_and_spreadsheets() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 2);
    // The indexed images are 64×48 and larger: past this MAX_PIXELS.
    let s = Server::start(
        &tmp.path().join("home"),
        &w,
        &data,
        &[("RATE_LIMIT", "0"), ("MAX_PIXELS", "2000")],
    );
    let names = [
        "<img src=x onerror=alert(1)>.png",
        "=HYPERLINK(1+1).png",
        "@SUM(1+1)cmd.png",
        "+cmd.png",
        "-2+3.png",
    ];
    let mut hashes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let r = s.upload(&[(name, &png(30, 20, 40 + i as u8))], &[]);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        hashes.push(
            r.json()[0]["analysis"]["hash"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The result page's <title> and body carry the name as text, never as markup.
    let page = s.get(&format!("/a/{}", hashes[0]));
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("<title>&lt;img src=x onerror=alert(1)&gt;.png · kadr</title>"),
        "{html}"
    );
    assert!(!html.contains("<img src=x"), "{html}");

    // Formula-looking names are text cells in both CSVs; scores stay numbers.
    let q = hashes.join(",");
    for path in [
        format!("/api/v1/export.csv?hashes={q}&t=-1"),
        format!("/api/v1/submission.csv?hashes={q}&t=-1"),
    ] {
        let r = s.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let text = r.text();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let firsts: Vec<String> = rows.records().map(|r| r.unwrap()[0].to_string()).collect();
        assert_eq!(
            firsts,
            [
                "<img src=x onerror=alert(1)>.png",
                "'=HYPERLINK(1+1).png",
                "'@SUM(1+1)cmd.png",
                "'+cmd.png",
                "'-2+3.png"
            ],
            "{path}"
        );
        for line in text.lines().skip(1) {
            for cell in line.split(',') {
                let formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
                assert!(
                    !formula || cell.parse::<f64>().is_ok(),
                    "{path}: cell {cell:?} starts like a formula"
                );
            }
        }
    }

    // Thumbnails are decoded under MAX_PIXELS: an indexed image past it is refused from its
    // header (413), while the file itself, which needs no decoding, is still served.
    let a = s
        .get(&format!("/api/v1/analysis?hash={}", hashes[1]))
        .json();
    let hit = a["hits"][0]["hash"].as_str().unwrap().to_string();
    let thumb = s.get(&format!("/img/{hit}?size=thumb"));
    expect_error(&thumb, 413, None, "thumbnail past MAX_PIXELS");
    assert_eq!(s.get(&format!("/img/{hit}")).status, 200);
    // An upload under the limit has its thumbnail.
    let own = s.get(&format!("/img/{}?size=thumb", hashes[1]));
    assert_eq!(own.status, 200);
    assert_eq!(own.header("content-type"), Some("image/jpeg"));
}
