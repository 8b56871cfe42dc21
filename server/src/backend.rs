//! The engine as the web app sees it: [`app::backend::Backend`] implemented over a
//! [`Workspace`], so server functions reach the engine through one shared trait object.

use crate::workspace::Workspace;
use app::types::{CategoryCount, IndexSummary};
use std::sync::Mutex;

/// The workspace behind the web app.
pub struct EngineBackend {
    ws: Mutex<Workspace>,
}

impl EngineBackend {
    /// Wraps an open workspace.
    pub fn new(ws: Mutex<Workspace>) -> Self {
        Self { ws }
    }
}

impl app::backend::Backend for EngineBackend {
    fn summary(&self) -> Result<IndexSummary, String> {
        let ws = self
            .ws
            .lock()
            .map_err(|_| "the engine is unavailable after an earlier failure".to_string())?;
        let model = ws.embedder().model_id().to_string();
        let counts = ws.store().counts(&model).map_err(|e| e.to_string())?;
        Ok(IndexSummary {
            images: counts.iter().map(|c| c.2).sum(),
            model,
            categories: counts
                .into_iter()
                .map(|(split, category, images)| CategoryCount {
                    split,
                    category,
                    images,
                })
                .collect(),
        })
    }
}
