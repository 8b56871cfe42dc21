//! Store: the SQLite metadata store, source of truth for what is indexed. One row per
//! (model, image path) with its content hash, split, category, the embedding itself and the
//! backbone's labels for it; text embeddings of those labels sit in their own table keyed by
//! (content hash, text model, text), so each is computed once. The FAISS index is derived data
//! that can always be rebuilt. WAL mode; every batch of inserts is one transaction, so a crash
//! loses at most the batch in flight.

use crate::fusion::CAPTION_SEPARATOR;
use crate::index::Entry;
use anyhow::{Context, Result};
use rusqlite::{named_params, params, Connection, OptionalExtension, ToSql};
use std::collections::HashMap;
use std::path::Path;

/// An image to record, with its embedding.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub path: String,
    pub hash: String,
    pub split: String,
    pub category: String,
    pub width: u32,
    pub height: u32,
    pub embedding: Vec<f32>,
    /// The backbone's top labels as text (`fusion::image_text`); `None` when it has none.
    pub labels: Option<String>,
}

/// A stored image without its embedding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImageRow {
    pub id: i64,
    pub path: String,
    pub hash: String,
    pub split: String,
    pub category: String,
}

/// A row id (or row) with its visual embedding and the embedding of its text.
pub type WithText<R> = (R, Vec<f32>, Vec<f32>);

/// The metadata store.
pub struct Store {
    conn: Connection,
}

/// An embedding as little-endian f32 bytes, the form SQLite stores.
pub fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`to_blob`].
pub fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Which text of an image a text embedding is of: the backbone's labels, or with a VLM its
/// caption under that VLM followed by the labels (`fusion::image_text_with`), and under which
/// text model it is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextKey<'a> {
    pub text_model: &'a str,
    /// The captioning VLM's id ([`crate::vlm::Vlm::id`]); `None`: the labels alone.
    pub vlm: Option<&'a str>,
}

impl<'a> TextKey<'a> {
    /// The labels' text under `text_model`.
    pub fn labels(text_model: &'a str) -> Self {
        Self {
            text_model,
            vlm: None,
        }
    }

    /// The named parameters of [`text_of!`] and [`TEXT_JOIN`], then `more`.
    fn params<'p>(&'p self, more: &[(&'p str, &'p dyn ToSql)]) -> Vec<(&'p str, &'p dyn ToSql)> {
        let mut p: Vec<(&str, &dyn ToSql)> = vec![
            (":text_model", &self.text_model),
            (":vlm", &self.vlm),
            (":sep", &CAPTION_SEPARATOR),
        ];
        p.extend_from_slice(more);
        p
    }
}

/// The SQL form of `fusion::image_text_with` for an image row `i` and its caption row `c`:
/// the labels without a VLM; with one, the caption (NULL until there is one) and the labels.
macro_rules! text_of {
    () => {
        "(CASE WHEN :vlm IS NULL THEN i.labels ELSE c.caption || coalesce(:sep || i.labels, '') END)"
    };
}

/// An image row `i`'s caption `c` under `:vlm`, if any.
macro_rules! caption_join {
    () => {
        "LEFT JOIN captions c ON c.hash = i.hash AND c.vlm = :vlm"
    };
}

/// Joins an image row `i` to the embedding `t` of its text ([`text_of!`]) under the text model
/// `:text_model`; rows without that text (no labels, or no caption yet) drop out.
const TEXT_JOIN: &str = concat!(
    caption_join!(),
    " JOIN text_embeddings t ON t.hash = i.hash AND t.text_model = :text_model AND t.text = ",
    text_of!()
);

fn generation_key(model: &str) -> String {
    format!("generation:{model}")
}

/// Counts one more change to `model`'s rows, inside the transaction that makes it.
fn bump_generation(tx: &rusqlite::Transaction, model: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [generation_key(model)],
    )?;
    Ok(())
}

/// An (id, split, category) row as an index entry.
fn entry(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        split: r.get(1)?,
        category: r.get(2)?,
    })
}

fn image_row(r: &rusqlite::Row) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: r.get(0)?,
        path: r.get(1)?,
        hash: r.get(2)?,
        split: r.get(3)?,
        category: r.get(4)?,
    })
}

/// Opens (creating if needed) an SQLite database the way every kadr database is used: WAL
/// (a crash loses at most the transaction in flight), NORMAL sync, and a wait on locks.
pub fn open_sqlite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_checked(path).with_context(|| {
            format!(
                "{} is damaged or not a kadr store: move it aside (the image files are untouched) \
                 and run `kadr index` again to rebuild it",
                path.display()
            )
        })
    }

    fn open_checked(path: &Path) -> Result<Self> {
        let conn = open_sqlite(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS images (
                id INTEGER PRIMARY KEY,
                model TEXT NOT NULL,
                path TEXT NOT NULL,
                hash TEXT NOT NULL,
                split TEXT NOT NULL DEFAULT '',
                category TEXT NOT NULL DEFAULT '',
                width INTEGER NOT NULL DEFAULT 0,
                height INTEGER NOT NULL DEFAULT 0,
                embedding BLOB NOT NULL,
                added_at INTEGER NOT NULL DEFAULT (unixepoch()),
                labels TEXT,
                UNIQUE (model, path)
            );
            CREATE INDEX IF NOT EXISTS images_model_hash ON images (model, hash);
            CREATE TABLE IF NOT EXISTS text_embeddings (
                hash TEXT NOT NULL,
                text_model TEXT NOT NULL,
                text TEXT NOT NULL,
                embedding BLOB NOT NULL,
                PRIMARY KEY (hash, text_model, text)
            );
            CREATE TABLE IF NOT EXISTS captions (
                hash TEXT NOT NULL,
                vlm TEXT NOT NULL,
                caption TEXT NOT NULL,
                PRIMARY KEY (hash, vlm)
            );
            CREATE TABLE IF NOT EXISTS vlm_embeddings (
                hash TEXT NOT NULL,
                vlm TEXT NOT NULL,
                embedding BLOB NOT NULL,
                PRIMARY KEY (hash, vlm)
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .context("creating the metadata schema")?;
        // Stores made before labels existed get the column empty: their rows stay searchable
        // visually, and indexing again in the fused space fills it in.
        let has_labels: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('images') WHERE name = 'labels'",
            [],
            |r| r.get(0),
        )?;
        if !has_labels {
            conn.execute("ALTER TABLE images ADD COLUMN labels TEXT", [])
                .context("adding the labels column")?;
        }
        Ok(Self { conn })
    }

    /// Length of the vectors stored for `model` (`None` when it has none).
    pub fn vector_dim(&self, model: &str) -> Result<Option<usize>> {
        Ok(self
            .conn
            .query_row(
                "SELECT length(embedding) FROM images WHERE model = ?1 LIMIT 1",
                params![model],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|bytes| bytes as usize / 4))
    }

    /// The content hash recorded for `path` under `model`, with its id.
    pub fn hash_of_path(&self, model: &str, path: &str) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, hash FROM images WHERE model = ?1 AND path = ?2",
                params![model, path],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Whether the row of `path` under `model` has labels (rows stored before labels existed
    /// have none).
    pub fn has_labels(&self, model: &str, path: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT labels IS NOT NULL FROM images WHERE model = ?1 AND path = ?2",
                params![model, path],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// An embedding already computed for this content (any path), with its labels, if one
    /// exists (labelled rows first).
    pub fn embedding_by_hash(
        &self,
        model: &str,
        hash: &str,
    ) -> Result<Option<(Vec<f32>, Option<String>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT embedding, labels FROM images WHERE model = ?1 AND hash = ?2
                 ORDER BY labels IS NULL LIMIT 1",
                params![model, hash],
                |r| Ok((from_blob(&r.get::<_, Vec<u8>>(0)?), r.get(1)?)),
            )
            .optional()?)
    }

    /// The stored embedding of `text` for the content `hash` under `text_model`.
    pub fn text_embedding(
        &self,
        hash: &str,
        text_model: &str,
        text: &str,
    ) -> Result<Option<Vec<f32>>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT embedding FROM text_embeddings
                 WHERE hash = ?1 AND text_model = ?2 AND text = ?3",
            )?
            .query_row(params![hash, text_model, text], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(|b| from_blob(&b)))
    }

    /// Records (hash, text, embedding) triples under `text_model` in one transaction.
    pub fn insert_text_embeddings(
        &mut self,
        text_model: &str,
        rows: &[(String, String, Vec<f32>)],
    ) -> Result<()> {
        self.each_in_one_transaction(
            "INSERT OR REPLACE INTO text_embeddings (hash, text_model, text, embedding)
             VALUES (?1, ?2, ?3, ?4)",
            rows,
            |ins, (hash, text, v)| ins.execute(params![hash, text_model, text, to_blob(v)]),
        )
    }

    /// Runs the statement `sql` once per row of `rows`, bound by `run`, in one transaction.
    fn each_in_one_transaction<T>(
        &mut self,
        sql: &str,
        rows: &[T],
        run: impl Fn(&mut rusqlite::CachedStatement, &T) -> rusqlite::Result<usize>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(sql)?;
            for row in rows {
                run(&mut st, row)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The distinct (hash, text) of `model`'s rows that have their text under `key` (labels;
    /// with a VLM, a caption) but no embedding of it yet.
    pub fn missing_texts(&self, model: &str, key: TextKey) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare(concat!(
            "SELECT DISTINCT i.hash, ",
            text_of!(),
            " FROM images i ",
            caption_join!(),
            " WHERE i.model = :model AND ",
            text_of!(),
            " IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM text_embeddings t
                WHERE t.hash = i.hash AND t.text_model = :text_model AND t.text = ",
            text_of!(),
            ") ORDER BY 1, 2"
        ))?;
        let rows = st.query_map(key.params(&[(":model", &model)]).as_slice(), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The caption of the content `hash` under the VLM `vlm`, if it has one.
    pub fn caption(&self, hash: &str, vlm: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT caption FROM captions WHERE hash = ?1 AND vlm = ?2")?
            .query_row(params![hash, vlm], |r| r.get(0))
            .optional()?)
    }

    /// Records (hash, caption) pairs under the VLM `vlm` in one transaction.
    pub fn insert_captions(&mut self, vlm: &str, rows: &[(String, String)]) -> Result<()> {
        self.each_in_one_transaction(
            "INSERT OR REPLACE INTO captions (hash, vlm, caption) VALUES (?1, ?2, ?3)",
            rows,
            |ins, (hash, caption)| ins.execute(params![hash, vlm, caption]),
        )
    }

    /// How many contents have a caption under `vlm`.
    pub fn caption_count(&self, vlm: &str) -> Result<usize> {
        let n: i64 =
            self.conn
                .query_row("SELECT count(*) FROM captions WHERE vlm = ?1", [vlm], |r| {
                    r.get(0)
                })?;
        Ok(n as usize)
    }

    /// The VLM embedding of the content `hash` under `vlm` (a [`crate::vlm::Vlm::embedding_id`]).
    pub fn vlm_embedding(&self, hash: &str, vlm: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT embedding FROM vlm_embeddings WHERE hash = ?1 AND vlm = ?2")?
            .query_row(params![hash, vlm], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(|b| from_blob(&b)))
    }

    /// Records (hash, VLM embedding) pairs under `vlm` in one transaction.
    pub fn insert_vlm_embeddings(&mut self, vlm: &str, rows: &[(String, Vec<f32>)]) -> Result<()> {
        self.each_in_one_transaction(
            "INSERT OR REPLACE INTO vlm_embeddings (hash, vlm, embedding) VALUES (?1, ?2, ?3)",
            rows,
            |ins, (hash, v)| ins.execute(params![hash, vlm, to_blob(v)]),
        )
    }

    /// Every (entry, VLM embedding) of `model`'s rows whose content has one under `vlm`, in id
    /// order (with `ids`, only those), the vectors row-major: what an `EMBEDDING=vlm` index
    /// holds.
    pub fn vlm_vectors(
        &self,
        model: &str,
        vlm: &str,
        ids: Option<&[i64]>,
    ) -> Result<(Vec<Entry>, Vec<f32>)> {
        let select = "SELECT i.id, i.split, i.category, v.embedding FROM images i
             JOIN vlm_embeddings v ON v.hash = i.hash AND v.vlm = :vlm WHERE i.model = :model";
        let (mut entries, mut data) = (Vec::new(), Vec::new());
        let mut push = |r: &rusqlite::Row| -> rusqlite::Result<()> {
            entries.push(entry(r)?);
            data.extend(from_blob(&r.get::<_, Vec<u8>>(3)?));
            Ok(())
        };
        match ids {
            None => {
                let mut st = self.conn.prepare(&format!("{select} ORDER BY i.id"))?;
                let mut rows = st.query(named_params! {":model": model, ":vlm": vlm})?;
                while let Some(r) = rows.next()? {
                    push(r)?;
                }
            }
            Some(ids) => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{select} AND i.id = :id"))?;
                for id in ids {
                    let mut rows =
                        st.query(named_params! {":model": model, ":vlm": vlm, ":id": id})?;
                    if let Some(r) = rows.next()? {
                        push(r)?;
                    }
                }
            }
        }
        Ok((entries, data))
    }

    /// `model`'s rows whose paths start with `prefix` and whose content has a VLM embedding
    /// under `vlm`, with it.
    pub fn rows_under_with_vlm(
        &self,
        model: &str,
        vlm: &str,
        prefix: &str,
    ) -> Result<Vec<(ImageRow, Vec<f32>)>> {
        let mut st = self.conn.prepare(
            "SELECT i.id, i.path, i.hash, i.split, i.category, v.embedding FROM images i
             JOIN vlm_embeddings v ON v.hash = i.hash AND v.vlm = :vlm
             WHERE i.model = :model AND substr(i.path, 1, length(:prefix)) = :prefix
             ORDER BY i.path",
        )?;
        let rows = st.query_map(
            named_params! {":model": model, ":vlm": vlm, ":prefix": prefix},
            |r| Ok((image_row(r)?, from_blob(&r.get::<_, Vec<u8>>(5)?))),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many of `model`'s rows have a VLM embedding under `vlm`, with the fingerprint of
    /// those rows (see [`Self::fingerprint`]).
    pub fn vlm_fingerprint(&self, model: &str, vlm: &str) -> Result<(usize, String)> {
        let (n, s): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(i.id), 0) FROM images i
             JOIN vlm_embeddings v ON v.hash = i.hash AND v.vlm = :vlm WHERE i.model = :model",
            named_params! {":model": model, ":vlm": vlm},
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as usize, format!("{n}:{s}:g{}", self.generation(model)?)))
    }

    /// Length of the VLM embeddings stored under `vlm` (`None` when it has none).
    pub fn vlm_dim(&self, vlm: &str) -> Result<Option<usize>> {
        Ok(self
            .conn
            .query_row(
                "SELECT length(embedding) FROM vlm_embeddings WHERE vlm = ?1 LIMIT 1",
                [vlm],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|bytes| bytes as usize / 4))
    }

    /// Records a batch in one transaction. A path already present is replaced; the returned
    /// pairs are (new ids in input order, ids that were replaced and must leave the index).
    pub fn insert_batch(&mut self, model: &str, rows: &[NewImage]) -> Result<(Vec<i64>, Vec<i64>)> {
        let tx = self.conn.transaction()?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut replaced = Vec::new();
        {
            let mut old =
                tx.prepare_cached("SELECT id FROM images WHERE model = ?1 AND path = ?2")?;
            let mut del = tx.prepare_cached("DELETE FROM images WHERE id = ?1")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO images
                 (model, path, hash, split, category, width, height, embedding, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for r in rows {
                if let Some(id) = old
                    .query_row(params![model, r.path], |x| x.get::<_, i64>(0))
                    .optional()?
                {
                    del.execute([id])?;
                    replaced.push(id);
                }
                ins.execute(params![
                    model,
                    r.path,
                    r.hash,
                    r.split,
                    r.category,
                    r.width,
                    r.height,
                    to_blob(&r.embedding),
                    r.labels
                ])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        bump_generation(&tx, model)?;
        tx.commit()?;
        Ok((ids, replaced))
    }

    /// Deletes `model`'s rows by id; returns how many existed.
    pub fn remove(&mut self, model: &str, ids: &[i64]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut del = tx.prepare_cached("DELETE FROM images WHERE id = ?1 AND model = ?2")?;
            for id in ids {
                n += del.execute(params![id, model])?;
            }
        }
        if n > 0 {
            bump_generation(&tx, model)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Every (entry, embedding) of `model` in id order (with `ids`, only those): the input to
    /// build or reconcile an index.
    pub fn all_vectors(&self, model: &str) -> Result<(Vec<Entry>, Vec<f32>)> {
        self.vectors_where(model, None)
    }

    /// [`Self::all_vectors`] restricted to `ids`.
    pub fn vectors_of(&self, model: &str, ids: &[i64]) -> Result<(Vec<Entry>, Vec<f32>)> {
        self.vectors_where(model, Some(ids))
    }

    fn vectors_where(&self, model: &str, ids: Option<&[i64]>) -> Result<(Vec<Entry>, Vec<f32>)> {
        let mut entries = Vec::new();
        let mut data = Vec::new();
        let mut take = |r: &rusqlite::Row| -> rusqlite::Result<()> {
            entries.push(entry(r)?);
            data.extend(from_blob(&r.get::<_, Vec<u8>>(3)?));
            Ok(())
        };
        match ids {
            None => {
                let mut st = self.conn.prepare(
                    "SELECT id, split, category, embedding FROM images WHERE model = ?1 ORDER BY id",
                )?;
                let mut rows = st.query([model])?;
                while let Some(r) = rows.next()? {
                    take(r)?;
                }
            }
            Some(ids) => {
                let mut st = self.conn.prepare_cached(
                    "SELECT id, split, category, embedding FROM images WHERE model = ?1 AND id = ?2",
                )?;
                for id in ids {
                    let mut rows = st.query(params![model, id])?;
                    if let Some(r) = rows.next()? {
                        take(r)?;
                    }
                }
            }
        }
        Ok((entries, data))
    }

    /// The ids of `model`'s rows with their split and category (no vectors), in id order.
    pub fn entries(&self, model: &str) -> Result<Vec<Entry>> {
        let mut st = self
            .conn
            .prepare("SELECT id, split, category FROM images WHERE model = ?1 ORDER BY id")?;
        let rows = st.query_map([model], entry)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// [`Self::entries`] of the rows whose text has an embedding under `key`: what a
    /// fused index holds.
    pub fn entries_with_text(&self, model: &str, key: TextKey) -> Result<Vec<Entry>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT i.id, i.split, i.category FROM images i {TEXT_JOIN}
             WHERE i.model = :model ORDER BY i.id"
        ))?;
        let rows = st.query_map(key.params(&[(":model", &model)]).as_slice(), entry)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every (entry, embedding, text embedding) of `model` whose text has an embedding under
    /// `key`, in id order (with `ids`, only those): the input to build a fused index.
    pub fn all_vector_pairs(&self, model: &str, key: TextKey) -> Result<Vec<WithText<Entry>>> {
        self.vector_pairs_where(model, key, None)
    }

    /// Every (entry, text embedding) of `model`'s rows whose text has an embedding under
    /// `key`, in id order, the vectors row-major: the input to build a text index.
    pub fn all_text_vectors(&self, model: &str, key: TextKey) -> Result<(Vec<Entry>, Vec<f32>)> {
        let mut st = self.conn.prepare(&format!(
            "SELECT i.id, i.split, i.category, t.embedding FROM images i {TEXT_JOIN}
             WHERE i.model = :model ORDER BY i.id"
        ))?;
        let mut rows = st.query(key.params(&[(":model", &model)]).as_slice())?;
        let (mut entries, mut data) = (Vec::new(), Vec::new());
        while let Some(r) = rows.next()? {
            entries.push(entry(r)?);
            data.extend(from_blob(&r.get::<_, Vec<u8>>(3)?));
        }
        Ok((entries, data))
    }

    /// [`Self::all_vector_pairs`] restricted to `ids`.
    pub fn vector_pairs_of(
        &self,
        model: &str,
        key: TextKey,
        ids: &[i64],
    ) -> Result<Vec<WithText<Entry>>> {
        self.vector_pairs_where(model, key, Some(ids))
    }

    fn vector_pairs_where(
        &self,
        model: &str,
        key: TextKey,
        ids: Option<&[i64]>,
    ) -> Result<Vec<WithText<Entry>>> {
        let pair = |r: &rusqlite::Row| -> rusqlite::Result<WithText<Entry>> {
            Ok((
                entry(r)?,
                from_blob(&r.get::<_, Vec<u8>>(3)?),
                from_blob(&r.get::<_, Vec<u8>>(4)?),
            ))
        };
        let select = format!(
            "SELECT i.id, i.split, i.category, i.embedding, t.embedding FROM images i {TEXT_JOIN}
             WHERE i.model = :model"
        );
        match ids {
            None => {
                let mut st = self.conn.prepare(&format!("{select} ORDER BY i.id"))?;
                let rows = st.query_map(key.params(&[(":model", &model)]).as_slice(), pair)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            }
            Some(ids) => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{select} AND i.id = :id"))?;
                let mut out = Vec::new();
                for id in ids {
                    let mut rows =
                        st.query(key.params(&[(":model", &model), (":id", id)]).as_slice())?;
                    if let Some(r) = rows.next()? {
                        out.push(pair(r)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// (id, path) of `model`'s rows whose paths start with `prefix`.
    pub fn paths_under(&self, model: &str, prefix: &str) -> Result<Vec<(i64, String)>> {
        let mut st = self.conn.prepare(
            "SELECT id, path FROM images
             WHERE model = ?1 AND substr(path, 1, length(?2)) = ?2 ORDER BY path",
        )?;
        let rows = st.query_map(params![model, prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rows by id (missing ids are skipped).
    pub fn rows(&self, ids: &[i64]) -> Result<HashMap<i64, ImageRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, path, hash, split, category FROM images WHERE id = ?1")?;
        let mut out = HashMap::new();
        for id in ids {
            if let Some(row) = st.query_row([id], image_row).optional()? {
                out.insert(*id, row);
            }
        }
        Ok(out)
    }

    /// The rows of `model` whose paths start with `prefix`, with embeddings.
    pub fn rows_under(&self, model: &str, prefix: &str) -> Result<Vec<(ImageRow, Vec<f32>)>> {
        let mut st = self.conn.prepare(
            "SELECT id, path, hash, split, category, embedding FROM images
             WHERE model = ?1 AND substr(path, 1, length(?2)) = ?2 ORDER BY path",
        )?;
        let rows = st.query_map(params![model, prefix], |r| {
            Ok((image_row(r)?, from_blob(&r.get::<_, Vec<u8>>(5)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// An indexed image by content hash (the first path with it), with its embedding.
    pub fn row_by_hash(&self, model: &str, hash: &str) -> Result<Option<(ImageRow, Vec<f32>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, path, hash, split, category, embedding FROM images
                 WHERE model = ?1 AND hash = ?2 ORDER BY id LIMIT 1",
                params![model, hash],
                |r| Ok((image_row(r)?, from_blob(&r.get::<_, Vec<u8>>(5)?))),
            )
            .optional()?)
    }

    /// Like [`Self::rows_under`], with each row's text embedding under `key`; rows
    /// whose text has none are left out.
    pub fn rows_under_with_text(
        &self,
        model: &str,
        key: TextKey,
        prefix: &str,
    ) -> Result<Vec<WithText<ImageRow>>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT i.id, i.path, i.hash, i.split, i.category, i.embedding, t.embedding
             FROM images i {TEXT_JOIN}
             WHERE i.model = :model AND substr(i.path, 1, length(:prefix)) = :prefix
             ORDER BY i.path"
        ))?;
        let rows = st.query_map(
            key.params(&[(":model", &model), (":prefix", &prefix)])
                .as_slice(),
            |r| {
                Ok((
                    image_row(r)?,
                    from_blob(&r.get::<_, Vec<u8>>(5)?),
                    from_blob(&r.get::<_, Vec<u8>>(6)?),
                ))
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A fingerprint of what the index of `model` must contain: the row count, the sum of
    /// ids, and the model's generation, a counter every change bumps in its own transaction.
    /// Count and sum alone are not enough: SQLite reuses the highest row id after a delete,
    /// so deleting the last row and inserting another gives the same pair.
    pub fn fingerprint(&self, model: &str) -> Result<String> {
        let (n, s): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(id), 0) FROM images WHERE model = ?1",
            [model],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(format!("{n}:{s}:g{}", self.generation(model)?))
    }

    /// Rows stored for `model`.
    pub fn count(&self, model: &str) -> Result<usize> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM images WHERE model = ?1",
            [model],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    /// Rows of `model` whose text has an embedding under `key`: what a fused index
    /// holds.
    pub fn count_with_text(&self, model: &str, key: TextKey) -> Result<usize> {
        let n: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM images i {TEXT_JOIN} WHERE i.model = :model"),
            key.params(&[(":model", &model)]).as_slice(),
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    /// How many changes `model`'s rows have seen.
    pub fn generation(&self, model: &str) -> Result<u64> {
        Ok(self
            .meta(&generation_key(model))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// [`Self::fingerprint`] of the rows of `model` whose text has an embedding under
    /// `key`: what a fused index must contain.
    pub fn fingerprint_with_text(&self, model: &str, key: TextKey) -> Result<String> {
        let (n, s): (i64, i64) = self.conn.query_row(
            &format!(
                "SELECT count(*), coalesce(sum(i.id), 0) FROM images i {TEXT_JOIN}
                 WHERE i.model = :model"
            ),
            key.params(&[(":model", &model)]).as_slice(),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(format!("{n}:{s}:g{}", self.generation(model)?))
    }

    /// Image counts per (split, category) for `model`.
    pub fn counts(&self, model: &str) -> Result<Vec<(String, String, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT split, category, count(*) FROM images WHERE model = ?1 GROUP BY split, category ORDER BY split, category",
        )?;
        let rows = st.query_map([model], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Reads a value from the key-value table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a value to the key-value table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(path: &str, hash: &str, v: f32) -> NewImage {
        NewImage {
            path: path.into(),
            hash: hash.into(),
            split: "train".into(),
            category: "cat".into(),
            width: 1,
            height: 1,
            embedding: vec![v, -v],
            labels: None,
        }
    }

    #[test]
    fn insert_replace_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.sqlite")).unwrap();
        let (ids, replaced) = s
            .insert_batch("m", &[img("/a.png", "h1", 1.0), img("/b.png", "h2", 2.0)])
            .unwrap();
        assert_eq!((ids.len(), replaced.len()), (2, 0));
        assert_eq!(
            s.hash_of_path("m", "/a.png").unwrap(),
            Some((ids[0], "h1".into()))
        );
        assert_eq!(s.hash_of_path("other", "/a.png").unwrap(), None);
        assert_eq!(
            s.embedding_by_hash("m", "h2").unwrap(),
            Some((vec![2.0, -2.0], None))
        );
        let (new, replaced) = s.insert_batch("m", &[img("/a.png", "h3", 3.0)]).unwrap();
        assert_eq!(replaced, vec![ids[0]]);
        let (all, data) = s.all_vectors("m").unwrap();
        let all: Vec<i64> = all.iter().map(|e| e.id).collect();
        assert_eq!(all, vec![ids[1], new[0]]);
        assert_eq!(data, vec![2.0, -2.0, 3.0, -3.0]);
        assert_eq!(
            s.vectors_of("m", &[new[0], 999]).unwrap().1,
            vec![3.0, -3.0]
        );
        assert_eq!(s.entries("m").unwrap()[0].split, "train");
        assert_eq!(s.count("m").unwrap(), 2);
        assert_eq!(
            s.paths_under("m", "/a").unwrap(),
            vec![(new[0], "/a.png".to_string())]
        );
        assert_eq!(
            s.remove("other", &[ids[1]]).unwrap(),
            0,
            "another model's ids"
        );
        assert_eq!(s.remove("m", &[ids[1]]).unwrap(), 1);
        assert_eq!(
            s.counts("m").unwrap(),
            vec![("train".into(), "cat".into(), 1)]
        );
        assert_eq!(s.rows_under("m", "/a").unwrap().len(), 1);
        s.set_meta("k", "v").unwrap();
        assert_eq!(s.meta("k").unwrap().as_deref(), Some("v"));
    }

    /// SQLite hands the highest row id out again after it is deleted: count and id sum alone
    /// would then say nothing changed. The generation says otherwise.
    #[test]
    fn fingerprint_changes_when_a_deleted_last_id_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.sqlite")).unwrap();
        let (ids, _) = s
            .insert_batch("m", &[img("/a.png", "h1", 1.0), img("/b.png", "h2", 2.0)])
            .unwrap();
        let before = s.fingerprint("m").unwrap();
        let other = s.fingerprint("other").unwrap();
        assert_eq!(s.remove("m", &[ids[1]]).unwrap(), 1);
        let (again, _) = s.insert_batch("m", &[img("/c.png", "h3", 3.0)]).unwrap();
        assert_eq!(again[0], ids[1], "SQLite reused the id");
        assert_ne!(s.fingerprint("m").unwrap(), before);
        assert_eq!(
            s.fingerprint("other").unwrap(),
            other,
            "another model's is untouched"
        );
        assert_eq!(s.generation("m").unwrap(), 3);
    }

    fn labelled(path: &str, hash: &str, v: f32, text: &str) -> NewImage {
        NewImage {
            labels: Some(text.into()),
            ..img(path, hash, v)
        }
    }

    #[test]
    fn text_embeddings_join_rows_by_hash_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.sqlite")).unwrap();
        let (ids, _) = s
            .insert_batch(
                "m",
                &[
                    labelled("/a.png", "h1", 1.0, "cup, mug"),
                    labelled("/b.png", "h1", 1.0, "cup, mug"),
                    labelled("/c.png", "h2", 2.0, "bee"),
                    img("/d.png", "h3", 3.0),
                ],
            )
            .unwrap();
        assert!(s.has_labels("m", "/a.png").unwrap());
        assert!(!s.has_labels("m", "/d.png").unwrap());
        assert_eq!(
            s.embedding_by_hash("m", "h1").unwrap(),
            Some((vec![1.0, -1.0], Some("cup, mug".into())))
        );
        // Distinct (hash, text) pairs: identical content is embedded once; unlabelled rows wait.
        assert_eq!(
            s.missing_texts("m", TextKey::labels("t")).unwrap(),
            vec![
                ("h1".into(), "cup, mug".into()),
                ("h2".into(), "bee".into())
            ]
        );
        s.insert_text_embeddings("t", &[("h1".into(), "cup, mug".into(), vec![0.5])])
            .unwrap();
        assert_eq!(
            s.text_embedding("h1", "t", "cup, mug").unwrap(),
            Some(vec![0.5])
        );
        assert_eq!(s.text_embedding("h1", "other", "cup, mug").unwrap(), None);
        assert_eq!(s.missing_texts("m", TextKey::labels("t")).unwrap().len(), 1);
        let pairs: Vec<_> = s
            .all_vector_pairs("m", TextKey::labels("t"))
            .unwrap()
            .into_iter()
            .map(|(e, v, t)| (e.id, v, t))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (ids[0], vec![1.0, -1.0], vec![0.5]),
                (ids[1], vec![1.0, -1.0], vec![0.5])
            ]
        );
        assert_eq!(
            s.vector_pairs_of("m", TextKey::labels("t"), &[ids[1], ids[2]])
                .unwrap()
                .len(),
            1
        );
        let fused: Vec<i64> = s
            .entries_with_text("m", TextKey::labels("t"))
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(fused, vec![ids[0], ids[1]]);
        assert_eq!(s.count_with_text("m", TextKey::labels("t")).unwrap(), 2);
        assert!(s
            .fingerprint_with_text("m", TextKey::labels("t"))
            .unwrap()
            .starts_with(&format!("2:{}:g", ids[0] + ids[1])));
        let under = s
            .rows_under_with_text("m", TextKey::labels("t"), "/b")
            .unwrap();
        assert_eq!(under.len(), 1);
        assert_eq!((under[0].0.id, under[0].2.clone()), (ids[1], vec![0.5]));
        // A row whose text changed no longer joins its old text's embedding.
        s.insert_batch("m", &[labelled("/a.png", "h1", 1.0, "teapot")])
            .unwrap();
        assert_eq!(
            s.all_vector_pairs("m", TextKey::labels("t")).unwrap().len(),
            1
        );
    }

    /// With a VLM, an image's text is its caption then its labels, the same text in SQL as
    /// `fusion::image_text_with` makes in Rust: the join finds the embedding stored under it,
    /// and an image waits for its caption before it has a text at all.
    #[test]
    fn captioned_texts_join_like_the_rust_formula() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.sqlite")).unwrap();
        let (ids, _) = s
            .insert_batch(
                "m",
                &[
                    labelled("/a.png", "h1", 1.0, "cup, mug"),
                    labelled("/b.png", "h2", 2.0, "bee"),
                    img("/c.png", "h3", 3.0),
                ],
            )
            .unwrap();
        let key = TextKey {
            text_model: "t",
            vlm: Some("vl"),
        };
        assert!(s.missing_texts("m", key).unwrap().is_empty());
        s.insert_captions(
            "vl",
            &[
                ("h1".into(), "A cup of coffee.".into()),
                ("h3".into(), "A car.".into()),
            ],
        )
        .unwrap();
        s.insert_captions("other", &[("h2".into(), "A bee.".into())])
            .unwrap();
        assert_eq!(
            s.caption("h1", "vl").unwrap().as_deref(),
            Some("A cup of coffee.")
        );
        assert_eq!(s.caption("h2", "vl").unwrap(), None);
        assert_eq!(s.caption_count("vl").unwrap(), 2);
        let text = |c, l| crate::fusion::image_text_with(Some(c), l).unwrap();
        let missing = s.missing_texts("m", key).unwrap();
        assert_eq!(
            missing,
            vec![
                ("h1".into(), text("A cup of coffee.", Some("cup, mug"))),
                ("h3".into(), text("A car.", None)),
            ]
        );
        assert_eq!(missing[0].1, "A cup of coffee.\ncup, mug");
        s.insert_text_embeddings(
            "t",
            &missing
                .iter()
                .map(|(h, t)| (h.clone(), t.clone(), vec![0.25]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let with_text: Vec<i64> = s
            .entries_with_text("m", key)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(with_text, vec![ids[0], ids[2]]);
        // The labels' own text has no embedding: without the VLM, nothing joins.
        assert_eq!(s.count_with_text("m", TextKey::labels("t")).unwrap(), 0);
        assert_eq!(s.all_text_vectors("m", key).unwrap().1, vec![0.25, 0.25]);
    }

    #[test]
    fn stores_from_before_labels_open_and_keep_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE images (
                    id INTEGER PRIMARY KEY, model TEXT NOT NULL, path TEXT NOT NULL,
                    hash TEXT NOT NULL, split TEXT NOT NULL DEFAULT '',
                    category TEXT NOT NULL DEFAULT '', width INTEGER NOT NULL DEFAULT 0,
                    height INTEGER NOT NULL DEFAULT 0, embedding BLOB NOT NULL,
                    added_at INTEGER NOT NULL DEFAULT (unixepoch()), UNIQUE (model, path));
                 INSERT INTO images (model, path, hash, embedding) VALUES ('m', '/old.png', 'h0', x'0000803f');",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.all_vectors("m").unwrap().1, vec![1.0]);
        assert!(!s.has_labels("m", "/old.png").unwrap());
        assert_eq!(
            s.embedding_by_hash("m", "h0").unwrap(),
            Some((vec![1.0], None))
        );
        s.insert_batch(
            "m",
            &[NewImage {
                labels: Some("bee".into()),
                ..img("/new.png", "h1", 2.0)
            }],
        )
        .unwrap();
        assert!(s.has_labels("m", "/new.png").unwrap());
        drop(s);
        // Opening again finds the column there.
        assert_eq!(
            Store::open(&path)
                .unwrap()
                .all_vectors("m")
                .unwrap()
                .0
                .len(),
            2
        );
    }
}
