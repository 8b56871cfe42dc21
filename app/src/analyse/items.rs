//! The upload queue's state on the page: one item per dropped file and where it stands.

use crate::types::Analysis;
use leptos::prelude::*;
use std::sync::Arc;

/// Where one dropped file stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemStatus {
    Queued,
    /// Being downscaled in the browser.
    Preparing,
    Uploading,
    Done(Arc<Analysis>),
    Failed(String),
    Cancelled,
}

impl ItemStatus {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Preparing => "preparing",
            Self::Uploading => "analysing",
            Self::Done(_) => "done",
            Self::Failed(_) => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One dropped file on the page.
#[derive(Clone, Debug)]
pub struct UploadItem {
    pub key: u64,
    pub name: String,
    /// Object URL of the local file, shown at once as its thumbnail.
    pub preview: Option<String>,
    pub status: RwSignal<ItemStatus>,
}

/// The upload queue's shared state.
#[derive(Clone, Copy)]
pub struct Queue {
    pub items: RwSignal<Vec<UploadItem>>,
    pub cancel: RwSignal<bool>,
    pub busy: RwSignal<bool>,
}

/// A file picked or dropped in the browser.
#[cfg(feature = "hydrate")]
pub type FileHandle = web_sys::File;
/// A file picked or dropped in the browser (nothing on the server).
#[cfg(not(feature = "hydrate"))]
pub type FileHandle = ();
