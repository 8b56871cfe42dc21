//! Qwen2-VL's tokenizer, read from a model folder.
//!
//! A folder with `tokenizer.json` is read from it, as it is. A folder without one (the hub's
//! `Qwen/Qwen2-VL-2B-Instruct` ships it, but copies often carry only the slow tokenizer's files)
//! is built from `vocab.json` + `merges.txt` + the added tokens exactly as transformers'
//! `Qwen2TokenizerFast` builds its backend when it has no `tokenizer.json`
//! (`convert_slow_tokenizer.Qwen2Converter`): byte-level BPE without dropout, unknown token,
//! prefixes or suffixes; an NFC normaliser; Qwen2's split regex (isolated matches) followed by a
//! byte-level pre-tokenizer without prefix space and without its own regex; a byte-level
//! post-processor that adds nothing (no BOS) and a byte-level decoder. The added tokens come
//! from `tokenizer_config.json`'s `added_tokens_decoder`, or, for files older than that field,
//! from `added_tokens.json` (the legacy rule: special when named as a special token, normalised
//! otherwise). `server/models/tests/qwen2vl_tokenizer.rs` compares the ids with the ones HF
//! `transformers` gives for the same files.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Qwen2's pre-tokenizer pattern (`tokenization_qwen2.PRETOKENIZE_REGEX`, the same string the
/// converter puts in the fast tokenizer's `Split`).
pub const QWEN2_SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The files a folder needs for [`load`]: `tokenizer.json`, or these.
pub const SLOW_FILES: [&str; 2] = ["vocab.json", "merges.txt"];

/// `Qwen2TokenizerFast`'s pad token when `tokenizer_config.json` names none.
const DEFAULT_PAD: &str = "<|endoftext|>";

/// Whether `dir` holds what [`load`] needs; `Err` names what is missing.
pub fn check_files(dir: &Path) -> std::result::Result<(), String> {
    if dir.join("tokenizer.json").exists() {
        return Ok(());
    }
    let missing: Vec<&str> = SLOW_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).exists())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "tokenizer.json (or {} to build it from)",
            SLOW_FILES.join(" + ")
        ))
    }
}

/// The tokenizer of the model folder `dir`: its `tokenizer.json` when there is one, otherwise
/// built by [`from_vocab_merges`].
pub fn load(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.exists() {
        return Tokenizer::from_file(&json)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading {}", json.display()));
    }
    from_vocab_merges(dir).with_context(|| {
        format!(
            "{} has no tokenizer.json; building it from {}",
            dir.display(),
            SLOW_FILES.join(" + ")
        )
    })
}

/// The pad token's content: `tokenizer_config.json`'s `pad_token`, else `<|endoftext|>` (the
/// default of `Qwen2TokenizerFast`). HF pads prompts of a batch with its id.
pub fn pad_token(dir: &Path) -> Result<String> {
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    Ok(config
        .as_ref()
        .and_then(|c| c.get("pad_token"))
        .and_then(token_content)
        .unwrap_or_else(|| DEFAULT_PAD.to_string()))
}

/// Builds the fast tokenizer from `vocab.json`, `merges.txt` and the added tokens, as
/// transformers' `Qwen2Converter` does (see the module documentation).
pub fn from_vocab_merges(dir: &Path) -> Result<Tokenizer> {
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    // The converter's `BPE(dropout=None, unk_token=None, continuing_subword_prefix="",
    // end_of_word_suffix="", fuse_unk=False, byte_fallback=False)`.
    let bpe = BPE::from_file(&path("vocab.json"), &path("merges.txt"))
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .map_err(anyhow::Error::msg)
        .context("reading vocab.json and merges.txt")?;
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT_PATTERN.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(anyhow::Error::msg)?;
    // `pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)`: the converter passes
    // the slow tokenizer's `add_prefix_space`, which Qwen2Tokenizer never sets (it warns that the
    // option has no effect), so it is always false; `trim_offsets` keeps its default.
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .use_regex(false);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NFC))
        .map_err(anyhow::Error::msg)?
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        // `processors.ByteLevel(trim_offsets=False)` and `decoders.ByteLevel()`: the Python
        // defaults otherwise, which only matter for offsets.
        .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
        .with_decoder(Some(ByteLevel::default()));

    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let added = added_tokens(dir, config.as_ref())?;
    for (id, token) in &added {
        let content = token.content.clone();
        tokenizer
            .add_tokens([token.clone()])
            .map_err(anyhow::Error::msg)?;
        match tokenizer.token_to_id(&content) {
            Some(got) if got == *id => {}
            got => bail!(
                "added token {content:?} should have id {id} but got {got:?}: the added tokens \
                 must follow the vocabulary without gaps, as HF assigns them in order"
            ),
        }
    }
    // Special tokens named by the config but absent from the added tokens are added after them,
    // as special, the way PreTrainedTokenizerFast does.
    if let Some(c) = &config {
        let mut named = Vec::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            named.extend(c.get(key).and_then(token_content));
        }
        if let Some(Value::Array(extra)) = c.get("additional_special_tokens") {
            named.extend(extra.iter().filter_map(token_content));
        }
        let new: Vec<AddedToken> = named
            .into_iter()
            .filter(|t| tokenizer.token_to_id(t).is_none())
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        if !new.is_empty() {
            tokenizer
                .add_special_tokens(new)
                .map_err(anyhow::Error::msg)?;
        }
        if c.get("split_special_tokens").and_then(Value::as_bool) == Some(true) {
            tokenizer.set_encode_special_tokens(true);
        }
    }
    Ok(tokenizer)
}

/// `(id, token)` in id order: `added_tokens_decoder` when the config has it, otherwise the
/// legacy `added_tokens.json` (HF reads it only then).
fn added_tokens(dir: &Path, config: Option<&Value>) -> Result<Vec<(u32, AddedToken)>> {
    let mut out = Vec::new();
    if let Some(Value::Object(decoder)) = config.and_then(|c| c.get("added_tokens_decoder")) {
        for (id, t) in decoder {
            let id: u32 = id
                .parse()
                .with_context(|| format!("added_tokens_decoder key {id:?} is not an id"))?;
            let flag =
                |k: &str, default: bool| t.get(k).and_then(Value::as_bool).unwrap_or(default);
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .with_context(|| format!("added_tokens_decoder[{id}] has no content"))?;
            // HF's AddedToken defaults: special false, normalized = not special.
            let special = flag("special", false);
            let token = AddedToken::from(content, special)
                .single_word(flag("single_word", false))
                .lstrip(flag("lstrip", false))
                .rstrip(flag("rstrip", false))
                .normalized(flag("normalized", !special));
            out.push((id, token));
        }
    } else if let Some(Value::Object(legacy)) = read_json(&dir.join("added_tokens.json"))? {
        let mut special_names = Vec::new();
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            let c = if f == "tokenizer_config.json" {
                config.cloned()
            } else {
                read_json(&dir.join(f))?
            };
            let Some(c) = c else { continue };
            for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                special_names.extend(c.get(key).and_then(token_content));
            }
            if let Some(Value::Array(extra)) = c.get("additional_special_tokens") {
                special_names.extend(extra.iter().filter_map(token_content));
            }
        }
        for (content, id) in legacy {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .with_context(|| format!("added_tokens.json: {content:?} has no id"))?;
            let special = special_names.contains(&content);
            out.push((id, AddedToken::from(content, special).normalized(!special)));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// A token named in a config: a string, or an object with `content` (an `AddedToken`).
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The JSON of `path`, `None` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
