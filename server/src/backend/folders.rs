//! Folder policy: which dataset folders may be served and added (inside `DATA_ROOTS`, or the
//! folders given at start), paths shown relative to them, the category names they hold.

use super::{internal, lock, EngineBackend};
use app::errors::ApiError;
use app::types::*;
use kadr_engine::vote::VoteConfig;
use std::path::{Path, PathBuf};

/// Longest dataset folder path accepted, in bytes (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

impl EngineBackend {
    /// `path` relative to the dataset folder holding it.
    pub(super) fn relative(&self, path: &str) -> String {
        // Called for every hit: look through the folders under the lock, without copying them.
        let Ok(folders) = self.inner.folders.lock() else {
            return path.to_string();
        };
        folders
            .iter()
            .find_map(|f| Path::new(path).strip_prefix(f).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    }

    /// 422 when a category rule names a category the index does not have (a typo would
    /// otherwise silently do nothing).
    pub fn check_categories(&self, cfg: &VoteConfig) -> Result<(), ApiError> {
        let rules = &cfg.rules;
        if rules.rename.is_empty() && rules.ignore.is_empty() {
            return Ok(());
        }
        let known: std::collections::BTreeSet<String> = self
            .inner
            .ws
            .store()
            .counts(&self.inner.visual_model)
            .map_err(internal)?
            .into_iter()
            .map(|(_, c, _)| c)
            .collect();
        let list = || {
            let mut names: Vec<&str> = known.iter().map(String::as_str).take(20).collect();
            if known.len() > 20 {
                names.push("…");
            }
            names.join(", ")
        };
        if let Some(from) = rules.rename.keys().find(|c| !known.contains(*c)) {
            return Err(ApiError::invalid(
                "rename",
                format!("unknown category {from:?} (known: {})", list()),
            ));
        }
        let targets: std::collections::BTreeSet<&String> = rules.rename.values().collect();
        if let Some(c) = rules
            .ignore
            .iter()
            .find(|c| !known.contains(*c) && !targets.contains(c))
        {
            return Err(ApiError::invalid(
                "ignore",
                format!("unknown category {c:?} (known: {})", list()),
            ));
        }
        Ok(())
    }

    /// The folder a user asked for, if it is allowed: an existing directory inside a data root
    /// (or, without roots, one of the served folders or inside one).
    pub(super) fn allowed_folder(&self, folder: &str) -> Result<PathBuf, ApiError> {
        if folder.trim().is_empty() {
            return Err(ApiError::invalid("folder", "give a folder on the server"));
        }
        if folder.len() > MAX_PATH_BYTES {
            return Err(ApiError::invalid(
                "folder",
                format!("longer than {MAX_PATH_BYTES} bytes"),
            ));
        }
        if folder.chars().any(char::is_control) {
            return Err(ApiError::invalid("folder", "contains control characters"));
        }
        if !Path::new(folder).is_absolute() {
            return Err(ApiError::invalid(
                "folder",
                "give an absolute path (the server's working folder is not yours)",
            ));
        }
        let roots = if self.inner.data_roots.is_empty() {
            self.inner
                .folders
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default()
        } else {
            self.inner.data_roots.clone()
        };
        let outside = || {
            ApiError::new(
                403,
                format!(
                    "{folder} is outside the allowed data folders (set DATA_ROOTS on the server)"
                ),
            )
        };
        let Ok(path) = Path::new(folder).canonicalize() else {
            // Say "does not exist" only inside the roots: outside, that would tell what exists.
            return Err(if roots.iter().any(|r| Path::new(folder).starts_with(r)) {
                ApiError::invalid("folder", format!("{folder} does not exist on the server"))
            } else {
                outside()
            });
        };
        // Both sides are canonical, so `..` and symlinks cannot lead outside.
        if !roots.iter().any(|r| path.starts_with(r)) {
            return Err(outside());
        }
        if !path.is_dir() {
            return Err(ApiError::invalid(
                "folder",
                format!("{folder} is not a folder"),
            ));
        }
        Ok(path)
    }

    /// What the index holds, per split and category, and the folders served.
    pub(super) fn index_summary(&self) -> Result<IndexSummary, ApiError> {
        let counts = self
            .inner
            .ws
            .store()
            .counts(&self.inner.visual_model)
            .map_err(internal)?;
        Ok(IndexSummary {
            images: counts.iter().map(|c| c.2).sum(),
            model: self.model().to_string(),
            categories: counts
                .into_iter()
                .map(|(split, category, images)| CategoryCount {
                    split,
                    category,
                    images,
                })
                .collect(),
            folders: lock(&self.inner.folders)?
                .iter()
                .map(|f| f.to_string_lossy().into_owned())
                .collect(),
        })
    }
}
