//! The Milvus backend (`INDEX_BACKEND=milvus`, `MILVUS_URI`): the vectors live in a Milvus
//! server or cluster, for sets that outgrow one machine or that several kadr servers share.
//! It speaks Milvus's gRPC API through the official Rust client (`milvus-sdk-rust`, its v1
//! client, which Milvus 2.3 and later accept), so the same code talks to a standalone server
//! and to a cluster's proxy.
//!
//! One collection per embedding space (`kadr_<space>`): the store's row id as primary key,
//! `split` and `category` as scalar fields (filters run inside Milvus as a boolean expression),
//! and the vector, compared by inner product. The index kind maps to Milvus's own: FLAT,
//! HNSW, IVF_FLAT, IVF_PQ. Searches use Session consistency: what this process inserted is
//! visible to its next search.
//!
//! A server that restarts or a connection that drops is retried, reconnecting, for
//! `MILVUS_TIMEOUT` seconds before an operation fails; the store stays the source of truth and
//! the workspace reconciles the collection with it (by id) when they disagree.

use super::faiss::ideal_nlist;
use super::{Entry, Filter, Hit, IndexKind, VectorIndex};
use anyhow::{anyhow, bail, Context, Result};
use milvus::client::Client;
use milvus::data::FieldColumn;
use milvus::index::{IndexParams, IndexType, MetricType};
use milvus::mutate::DeleteOptions;
use milvus::query::{QueryOptions, SearchOptions};
use milvus::schema::{CollectionSchema, CollectionSchemaBuilder, FieldSchema};
use milvus::value::{Value, ValueVec};
use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;
use std::time::{Duration, Instant};

const ID: &str = "id";
const SPLIT: &str = "split";
const CATEGORY: &str = "category";
const VECTOR: &str = "vector";
/// Longest split / category name kept (Milvus VARCHAR needs a bound).
const MAX_NAME: usize = 1024;
/// Rows per insert request: about 16 MB of vectors, well under gRPC's message limit.
const INSERT_BYTES: usize = 16 << 20;
/// Ids per delete or id-listing request.
const ID_CHUNK: usize = 16_384;
/// Milvus's consistency levels: `Strong` for counts and id listings (everything before the
/// request), `Session` for searches (what this process wrote, without waiting for the rest).
const STRONG: i32 = 0;
const SESSION: i32 = 1;

/// Where the server is and how to index in it.
#[derive(Debug, Clone, PartialEq)]
pub struct MilvusConfig {
    /// `http://host:19530`.
    pub uri: String,
    pub kind: IndexKind,
    /// IVF cells visited per query.
    pub nprobe: usize,
    /// HNSW candidates kept while searching.
    pub ef_search: usize,
    /// How long an operation is retried (reconnecting) before it fails.
    pub timeout: Duration,
}

impl From<&super::IndexConfig> for MilvusConfig {
    fn from(c: &super::IndexConfig) -> Self {
        Self {
            uri: c.milvus_uri.clone(),
            kind: c.faiss.kind,
            nprobe: c.faiss.nprobe,
            ef_search: c.faiss.ef_search,
            timeout: c.milvus_timeout,
        }
    }
}

/// A collection in a Milvus server.
pub struct MilvusIndex {
    cfg: MilvusConfig,
    collection: String,
    dim: usize,
    /// Rows held, as counted on open and kept up to date by this process (the one writer).
    count: usize,
    rt: tokio::runtime::Runtime,
    client: RwLock<Option<Client>>,
}

/// The collection name of an embedding space: letters, digits and underscores only.
pub fn collection_name(space_id: &str) -> String {
    let safe: String = space_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = format!("kadr_{safe}");
    name.truncate(255);
    name
}

/// A string literal of Milvus's expression language.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The boolean expression of a filter (`split in ["train","valid"] && category in [...]`).
pub fn filter_expr(filter: &Filter) -> String {
    let list = |field: &str, values: &[String]| {
        let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
        format!("{field} in [{}]", items.join(","))
    };
    let mut parts = Vec::new();
    if !filter.splits.is_empty() {
        parts.push(list(SPLIT, &filter.splits));
    }
    if !filter.categories.is_empty() {
        parts.push(list(CATEGORY, &filter.categories));
    }
    parts.join(" && ")
}

/// The client's error (176 bytes: boxed wherever it is returned).
type MilvusError = milvus::error::Error;

/// Whether an error may pass once the server is back: the connection, not the request.
fn transient(e: &MilvusError) -> bool {
    use MilvusError as E;
    match e {
        E::Communication(_) => true,
        E::Grpc(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::Internal
        ),
        // A restarting server answers before its components are up.
        E::Server(_, msg) => {
            let m = msg.to_ascii_lowercase();
            m.contains("not ready")
                || m.contains("not healthy")
                || m.contains("unavailable")
                || m.contains("not loaded")
                || m.contains("no available")
                || m.contains("not found in")
                || m.contains("channel")
                || m.contains("timeout")
        }
        _ => false,
    }
}

impl MilvusIndex {
    /// Connects and opens the collection of `space_id`, creating it (and its index) for
    /// `dim`-d vectors when it does not exist. A collection of another dimension is an error.
    pub fn open(cfg: &MilvusConfig, space_id: &str, dim: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("milvus")
            .enable_all()
            .build()
            .context("starting the Milvus client's runtime")?;
        let mut index = Self {
            cfg: cfg.clone(),
            collection: collection_name(space_id),
            dim,
            count: 0,
            rt,
            client: RwLock::new(None),
        };
        index.ensure_collection()?;
        index.count = index.count_rows()?;
        Ok(index)
    }

    /// Drops the collection and creates it empty: the start of a rebuild from the store.
    pub fn recreate(&mut self) -> Result<()> {
        let name = self.collection.clone();
        self.call("dropping the collection", move |c| {
            let name = name.clone();
            async move {
                if c.has_collection(name.as_str()).await? {
                    c.drop_collection(name.as_str()).await?;
                }
                Ok(())
            }
        })?;
        self.ensure_collection()?;
        self.count = 0;
        Ok(())
    }

    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    fn schema(&self) -> Result<CollectionSchema> {
        Ok(
            CollectionSchemaBuilder::new(&self.collection, "kadr: image embeddings of one space")
                .add_field(FieldSchema::new_primary_int64(
                    ID,
                    "the store's row id",
                    false,
                ))
                .add_field(FieldSchema::new_varchar(
                    SPLIT,
                    "train, valid, test or empty",
                    MAX_NAME as i32,
                ))
                .add_field(FieldSchema::new_varchar(
                    CATEGORY,
                    "the image's category",
                    MAX_NAME as i32,
                ))
                .add_field(FieldSchema::new_float_vector(
                    VECTOR,
                    "L2-normalised embedding",
                    self.dim as i64,
                ))
                .build()?,
        )
    }

    fn index_params(&self) -> IndexParams {
        let (kind, params): (IndexType, Vec<(&str, String)>) = match self.cfg.kind {
            IndexKind::Flat => (IndexType::Flat, vec![]),
            IndexKind::Hnsw => (
                IndexType::HNSW,
                vec![("M", "32".into()), ("efConstruction", "40".into())],
            ),
            // Milvus trains cells per sealed segment (up to ~100k 1280-d vectors each).
            IndexKind::Ivf => (
                IndexType::IvfFlat,
                vec![("nlist", ideal_nlist(100_000).to_string())],
            ),
            IndexKind::IvfPq => (
                IndexType::IvfPQ,
                vec![
                    ("nlist", ideal_nlist(100_000).to_string()),
                    ("m", super::faiss::pq_subquantizers(self.dim).to_string()),
                    ("nbits", "8".into()),
                ],
            ),
        };
        IndexParams::new(
            format!("{VECTOR}_index"),
            kind,
            MetricType::IP,
            params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<HashMap<_, _>>(),
        )
    }

    /// Creates the collection with its index if it is missing, checks its dimension, and
    /// loads it for search.
    fn ensure_collection(&self) -> Result<()> {
        let (name, dim) = (self.collection.clone(), self.dim);
        let schema = self.schema()?;
        let params = self.index_params();
        self.call("opening the collection", move |c| {
            let (name, schema, params) = (name.clone(), schema.clone(), params.clone());
            async move {
                if !c.has_collection(name.as_str()).await? {
                    c.create_collection(schema, None).await?;
                    c.create_index(name.as_str(), VECTOR, params).await?;
                } else {
                    let d = c.describe_collection(name.as_str()).await?;
                    let found = d
                        .schema
                        .fields
                        .iter()
                        .find(|f| f.name == VECTOR)
                        .and_then(|f| f.type_params.iter().find(|p| p.key == "dim"))
                        .and_then(|p| p.value.parse::<usize>().ok());
                    if let Some(found) = found {
                        if found != dim {
                            return Err(MilvusError::Unexpected(format!(
                                "collection {name} holds {found}-d vectors, this space has {dim}-d"
                            )));
                        }
                    }
                }
                c.load_collection(name.as_str(), None).await?;
                Ok(())
            }
        })
    }

    /// The client, connected (again) if need be.
    fn client(&self) -> Result<Client, Box<MilvusError>> {
        if let Some(c) = &*self.client.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(c.clone());
        }
        let uri = self.cfg.uri.clone();
        // The client's own default cuts every call at 10 s: a search of many queries over a
        // large collection takes longer. One call may take MILVUS_TIMEOUT.
        let timeout = self.cfg.timeout;
        let c = self.run(async move { Client::with_timeout(uri, timeout, None, None).await })?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Runs a future on the client's runtime and waits for it. Works from any thread, async
    /// workers included (the future runs on the runtime's own threads).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, MilvusError>> + Send + 'static,
    ) -> Result<T, Box<MilvusError>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await.map_err(Box::new));
        });
        rx.recv().unwrap_or_else(|_| {
            Err(Box::new(MilvusError::Unexpected(
                "the Milvus client's runtime stopped".into(),
            )))
        })
    }

    /// Runs `op` with a client, retrying (reconnecting) while the failure is the connection's
    /// and `MILVUS_TIMEOUT` has not passed.
    fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, MilvusError>> + Send + 'static,
    {
        let start = Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            let result = self.client().and_then(|c| self.run(op(c)));
            match result {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && start.elapsed() < self.cfg.timeout => {
                    tracing::warn!("Milvus at {}: {what}: {e}; retrying", self.cfg.uri);
                    // Drop the connection: the next attempt dials again.
                    *self.client.write().unwrap_or_else(|p| p.into_inner()) = None;
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                    if format!("{e}").to_ascii_lowercase().contains("not loaded") {
                        let name = self.collection.clone();
                        let _ = self.client().and_then(|c| {
                            self.run(async move { c.load_collection(name.as_str(), None).await })
                        });
                    }
                }
                Err(e) => return Err(anyhow!("Milvus at {}: {what} failed: {e}", self.cfg.uri)),
            }
        }
    }

    /// Waits until Milvus has built its index over every sealed segment (after a bulk load
    /// and a flush; growing segments are searched by brute force until they seal).
    /// The vector index's rows as Milvus counts them: indexed, flushed in all, and waiting
    /// for their index. (The client's `describe_index` drops these fields, so this asks the
    /// same RPC through the generated gRPC client.)
    fn index_rows(&self) -> Result<(i64, i64, i64)> {
        use milvus::proto::milvus::{
            milvus_service_client::MilvusServiceClient, DescribeIndexRequest,
        };
        let uri = self.cfg.uri.clone();
        let name = self.collection.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let r = async {
                let channel = tonic::transport::Endpoint::from_shared(uri)?
                    .connect()
                    .await?;
                let mut c = MilvusServiceClient::new(channel);
                let res = c
                    .describe_index(DescribeIndexRequest {
                        collection_name: name,
                        field_name: VECTOR.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if let Some(st) = res.status.as_ref().filter(|st| st.code != 0) {
                    bail!("describing the index: {}", st.reason);
                }
                anyhow::Ok(res.index_descriptions.iter().fold((0, 0, 0), |a, d| {
                    (
                        a.0 + d.indexed_rows,
                        a.1 + d.total_rows,
                        a.2 + d.pending_index_rows,
                    )
                }))
            }
            .await;
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| anyhow!("the Milvus client's runtime stopped"))?
            .with_context(|| format!("Milvus at {}: reading the index's progress", self.cfg.uri))
    }

    pub fn wait_for_index(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let name = self.collection.clone();
            let state = self.call("reading the index state", move |c| {
                let name = name.clone();
                async move { c.describe_index(name.as_str(), VECTOR).await }
            })?;
            let finished = state
                .iter()
                .all(|i| i.state() == milvus::proto::common::IndexState::Finished);
            // "Finished" alone is not enough: Milvus 2.3 reports it while sealed segments are
            // still queued for their index (searched by brute force meanwhile). The rows are.
            if finished {
                let (indexed, total, pending) = self.index_rows()?;
                if indexed >= total && pending == 0 {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!("Milvus did not finish its index within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Rows in the collection, as Milvus counts them.
    pub fn count_rows(&self) -> Result<usize> {
        let name = self.collection.clone();
        let cols = self.call("counting rows", move |c| {
            let name = name.clone();
            async move {
                let opts = QueryOptions::new()
                    .output_fields(vec!["count(*)".to_string()])
                    .consistency_level(STRONG);
                c.query(name.as_str(), "", &opts).await
            }
        })?;
        let col = cols
            .iter()
            .find(|c| c.name == "count(*)")
            .context("Milvus returned no count")?;
        let n: Vec<i64> = col
            .value
            .clone()
            .try_into()
            .map_err(|_| anyhow!("Milvus returned a count that is not an integer"))?;
        Ok(n.first().copied().unwrap_or(0).max(0) as usize)
    }
}

impl VectorIndex for MilvusIndex {
    fn approximate(&self) -> bool {
        self.cfg.kind == IndexKind::IvfPq
    }

    fn describe(&self) -> String {
        format!(
            "milvus {:?} {} at {}",
            self.cfg.kind, self.collection, self.cfg.uri
        )
        .to_lowercase()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.count
    }

    fn count(&self) -> Result<usize> {
        self.count_rows()
    }

    fn add(&mut self, entries: &[Entry], vectors: &[f32]) -> Result<()> {
        anyhow::ensure!(
            vectors.len() == entries.len() * self.dim,
            "vector data does not match ids × dim"
        );
        let schema = self.schema()?;
        let rows = (INSERT_BYTES / (self.dim * 4)).max(1);
        for (chunk, data) in entries.chunks(rows).zip(vectors.chunks(rows * self.dim)) {
            let columns = {
                let field = |n: &str| schema.get_field(n).context("schema field");
                let names = |f: fn(&Entry) -> &String| -> Vec<String> {
                    chunk
                        .iter()
                        .map(|e| {
                            let mut s = f(e).clone();
                            s.truncate(MAX_NAME);
                            s
                        })
                        .collect()
                };
                vec![
                    FieldColumn::new(field(ID)?, chunk.iter().map(|e| e.id).collect::<Vec<i64>>()),
                    FieldColumn::new(field(SPLIT)?, names(|e| &e.split)),
                    FieldColumn::new(field(CATEGORY)?, names(|e| &e.category)),
                    FieldColumn::new(field(VECTOR)?, data.to_vec()),
                ]
            };
            // Upsert, not insert: a request retried after a dropped connection may have been
            // applied already, and Milvus does not refuse a duplicate primary key.
            let name = self.collection.clone();
            self.call("inserting vectors", move |c| {
                let (name, columns) = (name.clone(), columns.clone());
                async move {
                    c.upsert(
                        name.as_str(),
                        columns,
                        None::<milvus::mutate::InsertOptions>,
                    )
                    .await
                    .map(|_| ())
                }
            })?;
        }
        // An upsert may replace rows: count what is there.
        self.count = self.count_rows()?;
        Ok(())
    }

    fn remove(&mut self, ids: &[i64]) -> Result<usize> {
        let mut removed = 0;
        for chunk in ids.chunks(ID_CHUNK) {
            let name = self.collection.clone();
            let ids = chunk.to_vec();
            let res = self.call("deleting vectors", move |c| {
                let (name, ids) = (name.clone(), ids.clone());
                async move {
                    c.delete(name.as_str(), &DeleteOptions::with_ids(ValueVec::Long(ids)))
                        .await
                }
            })?;
            removed += res.delete_cnt.max(0) as usize;
        }
        // Milvus counts a delete of an absent id too: recount.
        self.count = self.count_rows()?;
        Ok(removed.min(ids.len()))
    }

    fn search(&self, queries: &[f32], k: usize, filter: &Filter) -> Result<Vec<Vec<Hit>>> {
        anyhow::ensure!(
            queries.len().is_multiple_of(self.dim),
            "query has the wrong dimension"
        );
        let nq = queries.len() / self.dim;
        if nq == 0 || k == 0 || self.count == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let expr = filter_expr(filter);
        let knob: Option<(&'static str, String)> = match self.cfg.kind {
            IndexKind::Hnsw => Some(("ef", self.cfg.ef_search.max(k).to_string())),
            IndexKind::Ivf | IndexKind::IvfPq => Some(("nprobe", self.cfg.nprobe.to_string())),
            IndexKind::Flat => None,
        };
        // SearchOptions is not Clone: each attempt builds its own.
        let options = move || {
            let o = SearchOptions::new()
                .limit(k)
                .filter(expr.clone())
                .consistency_level(SESSION)
                .add_param("anns_field", VECTOR)
                .add_param("metric_type", "IP");
            match &knob {
                Some((key, value)) => o.add_param(*key, value.clone()),
                None => o,
            }
        };
        let name = self.collection.clone();
        let data: Vec<Vec<f32>> = queries.chunks(self.dim).map(<[f32]>::to_vec).collect();
        let results = self.call("searching", move |c| {
            let (name, options, data) = (name.clone(), options(), data.clone());
            async move {
                let values: Vec<Value> = data.into_iter().map(Value::from).collect();
                let res = c.search(name.as_str(), values, Some(options)).await?;
                Ok(res
                    .into_iter()
                    .map(|r| {
                        r.id.into_iter()
                            .zip(r.score)
                            .filter_map(|(id, score)| match id {
                                Value::Long(id) => Some(Hit { id, score }),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>())
            }
        })?;
        if results.len() != nq {
            bail!("Milvus answered {} of {nq} queries", results.len());
        }
        Ok(results)
    }

    fn persist(&self) -> Result<()> {
        let name = self.collection.clone();
        self.call("flushing", move |c| {
            let name = name.clone();
            async move { c.flush(name.as_str()).await }
        })
    }

    /// Every id, a page at a time (`id > last`, Milvus returns them in key order); checked
    /// against the count, so a page that came back out of order is noticed.
    fn ids(&self) -> Result<Option<Vec<i64>>> {
        // Store row ids are positive.
        let mut all = Vec::new();
        let mut last = -1i64;
        loop {
            let name = self.collection.clone();
            let expr = format!("{ID} > {last}");
            let cols = self.call("listing ids", move |c| {
                let (name, expr) = (name.clone(), expr.clone());
                async move {
                    let opts = QueryOptions::new()
                        .output_fields(vec![ID.to_string()])
                        .limit(ID_CHUNK as i64)
                        .consistency_level(STRONG);
                    c.query(name.as_str(), &expr, &opts).await
                }
            })?;
            let ids: Vec<i64> = match cols.into_iter().find(|c| c.name == ID) {
                Some(col) => col
                    .value
                    .try_into()
                    .map_err(|_| anyhow!("Milvus returned ids that are not integers"))?,
                None => Vec::new(),
            };
            let Some(&max) = ids.iter().max() else { break };
            all.extend(ids);
            last = max;
        }
        all.sort_unstable();
        all.dedup();
        let count = self.count_rows()?;
        if all.len() != count {
            bail!(
                "listing the ids of {} gave {} of its {count} rows",
                self.collection,
                all.len()
            );
        }
        Ok(Some(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_expressions_are_safe() {
        assert_eq!(
            collection_name("tf_efficientnet_lite0+minilm@0.5"),
            "kadr_tf_efficientnet_lite0_minilm_0_5"
        );
        assert_eq!(filter_expr(&Filter::all()), "");
        assert_eq!(
            filter_expr(&Filter::parse("train,valid", "a\"b")),
            r#"split in ["train","valid"] && category in ["a\"b"]"#
        );
    }
}
