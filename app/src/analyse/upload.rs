//! Upload (browser only): turn dropped files into queue entries with instant thumbnails,
//! downscale large images on an offscreen canvas, and send them in batches to the `analyse`
//! server function, stopping between batches when the user cancels.

use super::items::{ItemStatus, Queue, UploadItem};
use super::server::analyse;
use crate::types::UiDefaults;
use leptos::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, File, FileList, FormData};

/// Extensions accepted when the browser reports no MIME type.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];
/// JPEG quality of downscaled uploads.
const JPEG_QUALITY: f64 = 0.9;

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// The files of a `FileList`.
pub fn file_list(list: &FileList) -> Vec<File> {
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

fn looks_like_image(file: &File) -> bool {
    let mime = file.type_();
    if !mime.is_empty() {
        return mime.starts_with("image/");
    }
    let name = file.name().to_ascii_lowercase();
    IMAGE_EXTENSIONS
        .iter()
        .any(|ext| name.ends_with(&format!(".{ext}")))
}

/// Queues `files` (refusing non-images at once) and sends them, a batch per request. Files
/// dropped while an upload runs get a send loop of their own; the server serialises the work.
pub fn start(files: Vec<File>, queue: Queue, defaults: UiDefaults) {
    let mut jobs = Vec::new();
    let mut added = Vec::new();
    for file in files {
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let name = file.name();
        if !looks_like_image(&file) {
            added.push(UploadItem {
                key,
                name,
                preview: None,
                status: RwSignal::new(ItemStatus::Failed(
                    "not an image (JPEG, PNG, WebP, GIF or BMP expected)".into(),
                )),
            });
            continue;
        }
        let preview = web_sys::Url::create_object_url_with_blob(&file).ok();
        let item = UploadItem {
            key,
            name,
            preview,
            status: RwSignal::new(ItemStatus::Queued),
        };
        jobs.push((item.status, file));
        added.push(item);
    }
    queue.items.update(|items| items.extend(added));
    if jobs.is_empty() {
        return;
    }
    queue.cancel.set(false);
    queue.busy.set(true);
    leptos::task::spawn_local(async move {
        send(jobs, &defaults, queue.cancel).await;
        queue.busy.set(false);
    });
}

/// How often a batch is sent again when the server answers 503 (busy).
const BUSY_RETRIES: i32 = 5;

/// Resolves after `ms` milliseconds.
async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Sends the queued files batch by batch; `cancel` is read between batches (the batch in
/// flight completes, the rest are marked cancelled).
async fn send(
    jobs: Vec<(RwSignal<ItemStatus>, File)>,
    defaults: &UiDefaults,
    cancel: RwSignal<bool>,
) {
    let batch = defaults.batch_size.max(1);
    for chunk in jobs.chunks(batch) {
        if cancel.get_untracked() {
            for (status, _) in chunk {
                status.set(ItemStatus::Cancelled);
            }
            continue;
        }
        let form = match FormData::new() {
            Ok(f) => f,
            Err(_) => return,
        };
        for (status, file) in chunk {
            status.set(ItemStatus::Preparing);
            let blob = prepare(file, defaults.upload_max_side)
                .await
                .unwrap_or_else(|_| file.clone().into());
            let _ = form.append_with_blob_and_filename("files", &blob, &file.name());
            status.set(ItemStatus::Uploading);
        }
        // A busy server (503: its embedding queue is full) is asked again a little later.
        let mut tries = 0;
        let answer = loop {
            match analyse(form.clone().into()).await {
                Err(e) if e.status == 503 && tries < BUSY_RETRIES => {
                    tries += 1;
                    sleep_ms(1000 * tries).await;
                }
                answer => break answer,
            }
        };
        match answer {
            Ok(outcomes) => {
                for ((status, _), outcome) in chunk.iter().zip(outcomes) {
                    status.set(match (outcome.analysis, outcome.error) {
                        (Some(a), _) => ItemStatus::Done(Arc::new(a)),
                        (None, Some(e)) => ItemStatus::Failed(e.message),
                        (None, None) => ItemStatus::Failed("no result".into()),
                    });
                }
            }
            // Every file refused: each has its own reason when the server gave them.
            Err(e) if e.details.len() == chunk.len() => {
                for ((status, _), d) in chunk.iter().zip(e.details) {
                    status.set(ItemStatus::Failed(d.message));
                }
            }
            Err(e) => {
                for (status, _) in chunk {
                    status.set(ItemStatus::Failed(e.to_string()));
                }
            }
        }
    }
}

/// The bytes to upload: the file itself, or a JPEG re-encoding at most `max_side` pixels on
/// its longer side when it is larger.
async fn prepare(file: &File, max_side: u32) -> Result<Blob, JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let bitmap: web_sys::ImageBitmap = JsFuture::from(window.create_image_bitmap_with_blob(file)?)
        .await?
        .dyn_into()?;
    let (w, h) = (bitmap.width(), bitmap.height());
    if w.max(h) <= max_side || max_side == 0 {
        bitmap.close();
        return Ok(file.clone().into());
    }
    let scale = max_side as f64 / w.max(h) as f64;
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let canvas = web_sys::OffscreenCanvas::new(tw, th)?;
    let ctx: web_sys::OffscreenCanvasRenderingContext2d = canvas
        .get_context("2d")?
        .ok_or("no 2d context")?
        .dyn_into()?;
    // Transparent areas become white, as the server's decoder does.
    ctx.set_fill_style_str("#fff");
    ctx.fill_rect(0.0, 0.0, tw as f64, th as f64);
    ctx.draw_image_with_image_bitmap_and_dw_and_dh(&bitmap, 0.0, 0.0, tw as f64, th as f64)?;
    bitmap.close();
    let opts = web_sys::ImageEncodeOptions::new();
    opts.set_type("image/jpeg");
    opts.set_quality(JPEG_QUALITY);
    JsFuture::from(canvas.convert_to_blob_with_options(&opts)?)
        .await?
        .dyn_into()
}
