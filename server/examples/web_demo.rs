//! The web app over a fixed in-memory index, for trying the UI and for the Playwright tests
//! without models or an engine: `cargo run -p kadr --example web_demo -- [ADDR] [SITE_ROOT]`
//! (defaults `127.0.0.1:3000` and `target/site`).

use app::backend::Backend;
use app::types::{CategoryCount, IndexSummary};
use std::sync::Arc;

/// A backend that always reports the same small index.
struct DemoBackend;

impl Backend for DemoBackend {
    fn summary(&self) -> Result<IndexSummary, String> {
        let rows = [("train", "cat", 120), ("train", "dog", 95), ("valid", "cat", 30), ("valid", "dog", 25)];
        let categories: Vec<CategoryCount> = rows
            .into_iter()
            .map(|(split, category, images)| CategoryCount { split: split.into(), category: category.into(), images })
            .collect();
        Ok(IndexSummary {
            model: "demo-model".into(),
            images: categories.iter().map(|c| c.images).sum(),
            categories,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into()).parse()?;
    let site_root = args.next().unwrap_or_else(|| "target/site".into()).into();
    kadr::web::serve(addr, site_root, Arc::new(DemoBackend)).await
}
