//! Search by text through a real `kadr serve` and the CLI on the same workspace: the two real
//! photos of the golden set among synthetic images, the real EfficientNet-Lite0 and
//! all-MiniLM-L6-v2. The API finds the photo whose labels say the words, fuses the words with
//! an example image by content hash, agrees with `kadr search --text`, answers a user's
//! mistakes with 4xx naming the field, and the page renders the results without JavaScript.

mod common;

use common::server::Server;
use common::{effnet_weights, minilm_dir};

fn hits(v: &serde_json::Value) -> Vec<(String, f64)> {
    common::path_scores(&v["hits"])
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn search_by_text_in_the_api_the_page_and_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::photos_among_synthetic(&data);
    let home = tmp.path().join("home");
    let text_model = minilm_dir();
    let env = [
        ("MODEL", "tf_efficientnet_lite0"),
        ("TEXT_MODEL_PATH", text_model.to_str().unwrap()),
    ];
    let server = Server::start(&home, &effnet_weights(), &data, &env);

    let r = server.get(&format!("/api/v1/search?q={}", enc("a cup of espresso")));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let found = hits(&v);
    assert!(found[0].0.ends_with("coffee.png"), "{found:?}");
    assert_eq!(found.len(), 8, "all eight, k defaults to 20");
    assert_eq!(v["text"], "a cup of espresso");
    assert!(v["text_model"]
        .as_str()
        .unwrap()
        .starts_with("all-minilm-l6-v2@"));

    let r = server.get(&format!(
        "/api/v1/search?q={}&k=2&category=animals,red",
        enc("a tabby cat")
    ));
    let found = hits(&r.json());
    assert_eq!(found.len(), 2);
    assert!(found[0].0.ends_with("chelsea.png"), "{found:?}");
    assert!(found[1].0.contains("red/"), "{found:?}");

    // The CLI on the same workspace gives the same images and scores.
    drop(server);
    let out = common::kadr_effnet(
        &home,
        &[
            "--text-model-path",
            text_model.to_str().unwrap(),
            "search",
            "--text",
            "a tabby cat",
            "-k",
            "2",
            "--category",
            "animals,red",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let cli_hits = common::path_scores(&cli["neighbours"]);
    assert_eq!(cli_hits.len(), 2);
    for (c, a) in cli_hits.iter().zip(&found) {
        assert!(c.0.ends_with(&a.0), "{c:?} {a:?}");
        assert!((c.1 - a.1).abs() < 1e-4, "{c:?} {a:?}");
    }
    assert_eq!(cli["vote"]["category"], "animals");

    // With an example image by content hash: the fused score, the example itself first.
    let server = Server::start(&home, &effnet_weights(), &data, &env);
    let summary = server.get("/api/v1/search?q=coffee").json();
    let coffee = summary["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["path"].as_str().unwrap().ends_with("coffee.png"))
        .unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server.get(&format!(
        "/api/v1/search?q={}&hash={coffee}",
        enc("a tabby cat")
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["example"], coffee.as_str());
    let fused = hits(&v);
    assert!(fused[0].0.ends_with("coffee.png"), "{fused:?}");
    assert!(
        fused[0].1 < 0.999,
        "the words pull the example's own score down: {fused:?}"
    );

    // A user's mistakes: 4xx naming the field, never a 500.
    for (q, status, field) in [
        ("/api/v1/search?q=", 422, "q"),
        ("/api/v1/search?q=%20%20", 422, "q"),
        ("/api/v1/search?q=cat&k=0", 422, "k"),
        ("/api/v1/search?q=cat&k=51", 422, "k"),
        ("/api/v1/search?q=cat&hash=xyz", 422, "hash"),
    ] {
        let r = server.get(q);
        assert_eq!(r.status, status, "{q}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{q}");
    }
    let long = format!("/api/v1/search?q={}", "a".repeat(1001));
    assert_eq!(server.get(&long).status, 422);
    let r = server.get(&format!("/api/v1/search?q=cat&hash={}", "0".repeat(64)));
    assert_eq!(r.status, 404, "{}", r.text());

    // The page: server-rendered results, so it works before (and without) hydration.
    let page = server
        .get(&format!("/search?q={}", enc("a cup of espresso")))
        .text();
    assert!(page.contains("data-testid=\"search-results\""), "{page}");
    let first = page.find("data-testid=\"search-hit\"").unwrap();
    let after = &page[first..];
    let coffee_at = after.find("coffee.png").unwrap();
    assert!(
        after.find("chelsea.png").is_none_or(|c| coffee_at < c),
        "{after}"
    );
    let page = server.get("/search").text();
    assert!(page.contains("data-testid=\"search-form\"") && !page.contains("search-results"));
}
