//! Crash safety: `kadr index` killed with SIGKILL part-way keeps every batch it committed, a
//! restart indexes only the rest, every image ends up indexed exactly once, and search answers
//! exactly as after a clean run. `kadr serve` killed during a web index job or an upload
//! batch: after a restart the store, the index, the history and the uploads folder agree, the
//! job is marked interrupted and runs again to the end, and no answered upload is lost.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOTAL: usize = 3 * 120;

fn kadr(home: &Path, weights: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kadr"));
    c.env("KADR_HOME", home)
        .env("MODEL", "convnext_test")
        .env("MODEL_PATH", weights)
        .env("MAX_BATCH_SIZE", "2");
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows in the store, read as another process would (WAL lets readers in).
fn stored(home: &Path) -> Option<(usize, usize)> {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("kadr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row(
        "SELECT count(*), count(DISTINCT path) FROM images",
        [],
        |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
    )
    .ok()
}

/// (path, score) of the nearest neighbours, ordered by score then path (ties have no order).
fn neighbours(home: &Path, weights: &Path, query: &Path) -> Vec<(String, f64)> {
    let out = run(kadr(home, weights)
        .args(["search", "--json", "-k", "12"])
        .arg(query));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let mut n = common::path_scores(&v["neighbours"]);
    n.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    n
}

#[test]
fn kill_9_while_indexing_loses_at_most_a_batch_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green", "blue"], TOTAL / 3);
    let d = data.to_str().unwrap();

    let clean = tmp.path().join("clean");
    let out = run(kadr(&clean, &w).args(["index", d]));
    assert!(
        out.contains(&format!("{TOTAL} images, {TOTAL} embedded")),
        "{out}"
    );

    // Kill the indexer once a few batches are committed.
    let home = tmp.path().join("crashed");
    let mut child = kadr(&home, &w)
        .args(["index", d])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if matches!(stored(&home), Some((n, _)) if n >= 10) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the indexer finished before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (kept, distinct) = stored(&home).unwrap();
    assert!(
        (10..TOTAL).contains(&kept),
        "{kept} of {TOTAL} stored at the kill"
    );
    assert_eq!(kept, distinct);
    assert_eq!(kept % 2, 0, "whole batches of 2 only: {kept}");

    // The restart indexes only what is missing.
    let out = run(kadr(&home, &w).args(["index", d]));
    let rest = TOTAL - kept;
    assert!(
        out.contains(&format!(
            "{TOTAL} images, {rest} embedded, 0 reused, {kept} unchanged, 0 removed (files gone), 0 unreadable; index holds {TOTAL} (faiss flat)"
        )),
        "{out}"
    );
    assert_eq!(stored(&home), Some((TOTAL, TOTAL)));

    // Search is the same as after the clean run.
    for (cat, i) in [("red", 0), ("green", 17), ("blue", 59), ("blue", 119)] {
        let q = data.join(cat).join(format!("{i}.png"));
        let a = neighbours(&clean, &w, &q);
        let b = neighbours(&home, &w, &q);
        assert_eq!(a.len(), 12);
        assert_eq!(
            a.iter().map(|x| &x.0).collect::<Vec<_>>(),
            b.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{cat}/{i}"
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x.1 - y.1).abs() < 1e-5, "{cat}/{i}: {x:?} vs {y:?}");
        }
    }
}

#[test]
fn a_damaged_index_file_is_rebuilt_and_a_damaged_store_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let data = tmp.path().join("set");
    common::synthetic_dataset(&data, &["red", "green"], 3);
    let home = tmp.path().join("home");
    run(kadr(&home, &w).args(["index", data.to_str().unwrap()]));
    let q = data.join("red/1.png");
    let before = neighbours(&home, &w, &q);
    let index = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "faiss"))
        .unwrap();

    // Garbage in the index file: rebuilt from the store, same answers.
    std::fs::write(&index, b"not an index").unwrap();
    assert_eq!(neighbours(&home, &w, &q), before);

    // An index of another dimension (another model's file copied over): rebuilt too.
    use kadr_engine::index::VectorIndex;
    let other = kadr_engine::index::FaissIndex::exact(8, &[0.5f32; 48])
        .unwrap()
        .with_path(&index);
    other.persist().unwrap();
    assert_eq!(neighbours(&home, &w, &q), before);

    // A damaged store is not guessed at: the error names it and the way out.
    std::fs::write(home.join("kadr.sqlite"), vec![0x42u8; 8192]).unwrap();
    let _ = std::fs::remove_file(home.join("kadr.sqlite-wal"));
    let out = kadr(&home, &w)
        .args(["search", "--json"])
        .arg(&q)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kadr.sqlite is damaged or not a kadr store") && err.contains("kadr index"),
        "{err}"
    );
}

/// Waits for the newest job to leave `running`; its status.
fn wait_job(s: &common::server::Server) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let jobs = s.get("/api/v1/job-list").json();
        let last = jobs
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|j| j["id"].as_u64())
            .unwrap()
            .clone();
        if last["state"] != "running" {
            return last;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "job still running: {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_killed_during_an_index_job_keeps_its_batches_and_marks_it_interrupted() {
    use common::server::Server;
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let roots = tmp.path().join("roots");
    let base = roots.join("base");
    common::synthetic_dataset(&base, &["red", "green"], 2);
    let extra = roots.join("extra");
    common::synthetic_dataset(&extra, &["blue", "yellow", "red"], 80);
    let home = tmp.path().join("home");
    let env = [
        ("DATA_ROOTS", roots.to_str().unwrap()),
        ("RATE_LIMIT", "0"),
        ("MAX_BATCH_SIZE", "2"),
    ];
    let job = format!(
        r#"{{"request":{{"kind":"add_folder","folder":"{}"}}}}"#,
        extra.display()
    );

    let mut s = Server::start(&home, &w, &base, &env);
    let r = s.post_json("/api/v1/jobs", &job, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // SIGKILL once a few batches are committed.
    let t = Instant::now();
    let seen = loop {
        let jobs = s.get("/api/v1/job-list").json();
        let done = jobs[0]["done"].as_u64().unwrap() as usize;
        assert_eq!(
            jobs[0]["state"], "running",
            "finished before the kill: {jobs}"
        );
        if done >= 10 {
            break done;
        }
        assert!(t.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    };
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let (rows, distinct) = stored(&home).unwrap();
    assert_eq!(rows, distinct, "an image stored twice");
    assert!(
        rows >= 4 + seen && rows < 4 + 240,
        "{rows} rows after a kill at {seen} of 240"
    );

    // After a restart the index agrees with the store, and the job says it was interrupted.
    let s = Server::start(&home, &w, &base, &env);
    assert_eq!(s.get("/status").json()["index_size"], rows as u64);
    let jobs = s.get("/api/v1/job-list").json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["state"], "interrupted", "{jobs}");
    assert!(
        jobs[0]["message"]
            .as_str()
            .unwrap()
            .contains("run it again"),
        "{jobs}"
    );
    // The folder it was adding is known again: a re-index finishes it, embedding only the rest.
    let r = s.post_json("/api/v1/jobs", r#"{"request":{"kind":"reindex"}}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = wait_job(&s);
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(s.get("/status").json()["index_size"], 244);
    assert_eq!(stored(&home), Some((244, 244)));
    // Running the interrupted request itself again changes nothing more.
    let r = s.post_json("/api/v1/jobs", &job, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wait_job(&s)["state"], "done");
    assert_eq!(stored(&home), Some((244, 244)));
    // Every image is found as itself.
    let probe = extra.join("yellow/79.png");
    let r = s.upload(&[("probe.png", &std::fs::read(&probe).unwrap())], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let hit = &r.json()[0]["analysis"]["hits"][0];
    assert!(
        hit["path"].as_str().unwrap().ends_with("yellow/79.png"),
        "{hit}"
    );
    assert!(hit["score"].as_f64().unwrap() > 0.9999, "{hit}");
}

#[test]
fn serve_killed_during_uploads_keeps_every_answered_one() {
    use common::server::Server;
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let base = tmp.path().join("base");
    common::synthetic_dataset(&base, &["red", "green"], 2);
    let home = tmp.path().join("home");
    let env = [("RATE_LIMIT", "0")];
    let mut s = Server::start(&home, &w, &base, &env);
    let image = |i: u32| {
        let img = image::RgbImage::from_fn(300, 200, |x, y| {
            image::Rgb([(x + i) as u8, (y * 3 + i * 7) as u8, (i * 13) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    // A client uploading batches of 6 unseen images, one after another, noting what was
    // answered; the server is killed while a batch is in flight.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let addr = s.addr.clone();
    let client = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            for batch in 0u32.. {
                let files: Vec<(String, Vec<u8>)> = (0..6)
                    .map(|j| (format!("b{batch}-{j}.png"), image(batch * 6 + j)))
                    .collect();
                let refs: Vec<(&str, &[u8])> = files
                    .iter()
                    .map(|(n, b)| (n.as_str(), b.as_slice()))
                    .collect();
                let (ct, body) = common::server::multipart(&refs);
                let sent = std::panic::catch_unwind(|| {
                    common::server::raw_request(
                        &addr,
                        "POST",
                        "/api/v1/analyse",
                        &[("content-type", &ct)],
                        &body,
                        Some(body.len()),
                    )
                });
                let Ok(r) = sent else { return batch };
                if r.status != 200 {
                    return batch;
                }
                let v = r.json();
                let mut a = answered.lock().unwrap();
                for (o, (_, bytes)) in v.as_array().unwrap().iter().zip(&files) {
                    let hash = o["analysis"]["hash"].as_str().unwrap().to_string();
                    a.push((hash, bytes.clone()));
                }
            }
            unreachable!()
        })
    };
    let t = Instant::now();
    while answered.lock().unwrap().len() < 18 {
        assert!(t.elapsed() < Duration::from_secs(120), "uploads too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(40));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let batches = client.join().unwrap();
    let answered = answered.lock().unwrap().clone();
    assert!(batches >= 3, "{batches} batches");
    // What a kill in the middle of writing an upload leaves behind.
    let uploads = home.join("uploads");
    std::fs::write(uploads.join(".tmpKILLED"), b"half a file").unwrap();
    std::fs::write(uploads.join("ab".repeat(32)), b"written, never recorded").unwrap();

    let s = Server::start(&home, &w, &base, &env);
    // Nothing answered is lost: each analysis and its image are there, byte for byte.
    for (hash, bytes) in &answered {
        let a = s.get(&format!("/api/v1/analysis?hash={hash}"));
        assert_eq!(a.status, 200, "{hash}: {}", a.text());
        let img = s.get(&format!("/img/{hash}"));
        assert_eq!(img.status, 200, "{hash}");
        assert_eq!(&img.body, bytes, "{hash}");
    }
    // The uploads folder and the history agree: every file is a recorded analysis, the
    // debris of the kill is gone, and uploads never entered the index or the store.
    let files: Vec<String> = std::fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in &files {
        let a = s.get(&format!("/api/v1/analysis?hash={f}"));
        assert_eq!(a.status, 200, "{f} in uploads/ has no analysis");
    }
    let analyses = s.get("/api/v1/stats").json()["analyses"].as_u64().unwrap() as usize;
    assert_eq!(files.len(), analyses, "{files:?}");
    assert!(analyses >= answered.len());
    assert_eq!(s.get("/status").json()["index_size"], 4);
    assert_eq!(stored(&home), Some((4, 4)));
    // And the server goes on: the batch cut short can be sent again.
    let r = s.upload(&[("again.png", &image(10_000))], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A tmpfs mounted for the life of the test: a small disk to fill. Mounting needs root, which
/// CI has; without it the test fails saying so rather than skipping.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a {size} tmpfs and needs root for it (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    /// Fills the disk with `filler` until nothing more fits, then frees `leave` bytes.
    fn fill(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        let len = std::fs::metadata(&path).unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `PRAGMA integrity_check` of the store.
fn integrity(home: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("kadr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_full_disk_while_indexing_and_uploading_is_a_clear_error_and_nothing_breaks() {
    use common::server::Server;
    let tmp = tempfile::tempdir().unwrap();
    let w = common::tiny_convnext(tmp.path());
    let roots = tmp.path().join("roots");
    let base = roots.join("base");
    common::synthetic_dataset(&base, &["red", "green"], 2);
    let extra = roots.join("extra");
    common::synthetic_dataset(&extra, &["blue", "yellow", "red"], 80);
    // The workspace (store, index, history, uploads, logs) on a 6 MB disk.
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "6m");
    let home = disk.0.join("home");
    let env = [
        ("DATA_ROOTS", roots.to_str().unwrap()),
        ("RATE_LIMIT", "0"),
        ("MAX_BATCH_SIZE", "4"),
    ];
    let mut s = Server::start(&home, &w, &base, &env);
    let png = |i: u32| {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 3 + i) as u8, (y + i * 5) as u8, (i * 11) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    assert_eq!(s.upload(&[("before.png", &png(1))], &[]).status, 200);

    // Indexing onto an almost full disk: the job fails saying the disk is full, the server
    // stays up, and the store holds whole batches only, which the index mirrors.
    let filler = disk.fill(24 * 1024);
    let job = format!(
        r#"{{"request":{{"kind":"add_folder","folder":"{}"}}}}"#,
        extra.display()
    );
    let r = s.post_json("/api/v1/jobs", &job, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = wait_job(&s);
    assert_eq!(last["state"], "failed", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("disk is full"),
        "{last}"
    );
    assert!(s.alive(), "the server died of a full disk");
    let (rows, distinct) = stored(&home).unwrap();
    assert_eq!(rows, distinct);
    assert!(rows < 4 + 240, "{rows} rows: the disk was not full");
    assert_eq!(s.get("/status").json()["index_size"], rows as u64);
    assert_eq!(integrity(&home), "ok");

    // An upload onto a full disk: 507 saying so, nothing half-written, the server up.
    disk.fill(0);
    let r = s.upload(&[("full.png", &png(2))], &[]);
    assert_eq!(r.status, 507, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], 507);
    assert!(
        v["message"].as_str().unwrap().contains("disk is full"),
        "{v}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(home.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(s.get("/status").status, 200);
    assert!(s.alive());

    // Space again: the same upload and the job go through, and everything is indexed once.
    std::fs::remove_file(&filler).unwrap();
    let r = s.upload(&[("full.png", &png(2))], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.post_json("/api/v1/jobs", r#"{"request":{"kind":"reindex"}}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wait_job(&s)["state"], "done");
    assert_eq!(stored(&home), Some((244, 244)));
    assert_eq!(s.get("/status").json()["index_size"], 244);
    assert_eq!(integrity(&home), "ok");
    drop(s);
}
