//! Every `config.json` layout of the real Qwen2-VL-2B-Instruct config parses to the same model:
//! the hub file (`../shared/qwen2vl-2b-instruct`), its re-saves by transformers 4.57.1 and 5.24.0,
//! and the hub file without the vision fields that equal HF's defaults; a file that names
//! nothing gets HF's class defaults. Fixtures: `tests/data/qwen2vl_configs/`, written by
//! `scripts/golden/qwen2vl_config_layouts.py`.

use kadr_models::vlm::qwen2vl::Config;
use kadr_testkit as common;
use serde_json::Value;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/qwen2vl_configs")
            .join(name),
    )
    .unwrap()
}

/// What the model is built from, one line per field.
fn summary(c: &Config) -> String {
    let v = &c.vision_config;
    format!(
        "vocab {} hidden {} inter {} layers {} heads {} kv {} eps {} theta {} act {:?} tie {} \
         mrope {:?} eos {:?} pad {:?} image {} video {} vstart {} vend {}\n\
         vision depth {} embed {} heads {} hidden {} mlp {} patch {} merge {} temporal {} in {} \
         act {:?} theta {}",
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.rms_norm_eps,
        c.rope_theta,
        c.hidden_act,
        c.tie_word_embeddings,
        c.rope_scaling.mrope_section,
        c.eos_token_ids(),
        c.pad_token_id,
        c.image_token_id,
        c.video_token_id,
        c.vision_start_token_id,
        c.vision_end_token_id,
        v.depth,
        v.embed_dim,
        v.num_heads,
        v.hidden_size,
        v.mlp_ratio,
        v.patch_size,
        v.spatial_merge_size,
        v.temporal_patch_size,
        v.in_channels(),
        v.hidden_act,
        v.rope_theta(),
    )
}

fn hub() -> Config {
    let path = common::shared_dir().join("qwen2vl-2b-instruct/config.json");
    Config::from_json_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_hub_config_is_the_2b_model() {
    let s = summary(&hub());
    println!("{s}");
    assert!(s.starts_with(
        "vocab 151936 hidden 1536 inter 8960 layers 28 heads 12 kv 2 eps 0.000001 theta 1000000 \
         act Silu tie true mrope [16, 24, 24] eos [151645] pad None"
    ));
    assert!(s.ends_with(
        "vision depth 32 embed 1280 heads 16 hidden 1536 mlp 4 patch 14 merge 2 temporal 2 in 3 \
         act QuickGelu theta 10000"
    ));
}

#[test]
fn every_layout_parses_to_the_hub_model() {
    let want = summary(&hub());
    for name in [
        "transformers-4.57.1.json",
        "transformers-5.24.0.json",
        "vision-defaults-omitted.json",
    ] {
        let c = Config::from_json_str(&fixture(name))
            .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        assert_eq!(summary(&c), want, "{name}");
    }
}

/// The transformers 5 fixture really is the layout it stands for: nothing of the text model at
/// the top, the rope values only in `rope_parameters`.
#[test]
fn the_transformers_5_fixture_nests_the_text_and_rope_fields() {
    let v: Value = serde_json::from_str(&fixture("transformers-5.24.0.json")).unwrap();
    for key in [
        "hidden_size",
        "rope_theta",
        "rope_scaling",
        "num_hidden_layers",
    ] {
        assert!(v.get(key).is_none(), "{key} at the top");
    }
    let text = &v["text_config"];
    assert!(text.get("rope_theta").is_none() && text.get("rope_scaling").is_none());
    assert_eq!(
        text["rope_parameters"]["mrope_section"],
        serde_json::json!([16, 24, 24])
    );
    let omitted: Value = serde_json::from_str(&fixture("vision-defaults-omitted.json")).unwrap();
    for key in [
        "depth",
        "embed_dim",
        "num_heads",
        "mlp_ratio",
        "patch_size",
        "in_chans",
    ] {
        assert!(omitted["vision_config"].get(key).is_none(), "{key}");
    }
}

/// A config that names nothing is HF's `Qwen2VLConfig()`.
#[test]
fn defaults_are_hf_class_defaults() {
    let hf: Value =
        serde_json::from_str(&fixture("class-defaults-transformers-5.24.0.json")).unwrap();
    let c = Config::from_json_str("{}").unwrap();
    let (t, v) = (&hf["text"], &hf["vision"]);
    let u = |x: &Value| x.as_u64().unwrap() as usize;
    assert_eq!(c.vocab_size, u(&t["vocab_size"]));
    assert_eq!(c.hidden_size, u(&t["hidden_size"]));
    assert_eq!(c.intermediate_size, u(&t["intermediate_size"]));
    assert_eq!(c.num_hidden_layers, u(&t["num_hidden_layers"]));
    assert_eq!(c.num_attention_heads, u(&t["num_attention_heads"]));
    assert_eq!(c.num_key_value_heads, u(&t["num_key_value_heads"]));
    assert_eq!(c.rms_norm_eps, t["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(
        c.rope_theta,
        t["rope_parameters"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(t["hidden_act"], "silu");
    assert_eq!(format!("{:?}", c.hidden_act), "Silu");
    assert_eq!(
        c.eos_token_ids(),
        [t["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert!(t["pad_token_id"].is_null() && c.pad_token_id.is_none());
    assert_eq!(
        c.tie_word_embeddings,
        hf["tie_word_embeddings"].as_bool().unwrap()
    );
    for (ours, key) in [
        (c.image_token_id, "image_token_id"),
        (c.video_token_id, "video_token_id"),
        (c.vision_start_token_id, "vision_start_token_id"),
        (c.vision_end_token_id, "vision_end_token_id"),
    ] {
        assert_eq!(ours as u64, hf[key].as_u64().unwrap(), "{key}");
    }
    let cv = &c.vision_config;
    assert_eq!(cv.depth, u(&v["depth"]));
    assert_eq!(cv.embed_dim, u(&v["embed_dim"]));
    assert_eq!(cv.hidden_size, u(&v["hidden_size"]));
    assert_eq!(cv.num_heads, u(&v["num_heads"]));
    assert_eq!(cv.mlp_ratio, v["mlp_ratio"].as_f64().unwrap());
    assert_eq!(cv.in_channels(), u(&v["in_channels"]));
    assert_eq!(cv.patch_size, u(&v["patch_size"]));
    assert_eq!(cv.spatial_merge_size, u(&v["spatial_merge_size"]));
    assert_eq!(cv.temporal_patch_size, u(&v["temporal_patch_size"]));
    assert_eq!(
        cv.rope_theta(),
        v["rope_parameters"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(v["hidden_act"], "quick_gelu");
    assert_eq!(format!("{:?}", cv.hidden_act), "QuickGelu");
    // HF 5's fallback when no sections are named.
    assert_eq!(c.rope_scaling.mrope_section, [16, 24, 24]);
}

/// HF's precedence rules: `text_config` over top-level keys, `rope_scaling` over
/// `rope_parameters`, the rope parameters' theta over a flat one, `null` kv heads = heads.
#[test]
fn precedence_follows_hf() {
    let c = Config::from_json_str(
        r#"{"hidden_size": 1, "num_attention_heads": 12, "rope_theta": 5.0,
            "text_config": {"hidden_size": 1536, "num_key_value_heads": null},
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "rope_parameters": {"rope_theta": 7.0, "mrope_section": [16, 24, 24]}}"#,
    )
    .unwrap();
    assert_eq!(c.hidden_size, 1536);
    assert_eq!(c.num_key_value_heads, 12);
    assert_eq!(c.rope_scaling.mrope_section, [8, 12, 12]);
    assert_eq!(
        c.rope_theta, 5.0,
        "rope_scaling has no theta, so the flat one counts"
    );
    let c = Config::from_json_str(r#"{"rope_theta": 5.0, "rope_parameters": {"rope_theta": 7.0}}"#)
        .unwrap();
    assert_eq!(c.rope_theta, 7.0);
    // Tied when either level says so (HF 5 reads pre-5 files' text_config flag).
    let c = Config::from_json_str(r#"{"text_config": {"tie_word_embeddings": true}}"#).unwrap();
    assert!(c.tie_word_embeddings);
}
