//! Store: the SQLite metadata store, source of truth for what is indexed. One row per
//! (model, image path) with its content hash, split, category and the embedding itself, so
//! the FAISS index is derived data that can always be rebuilt. WAL mode; every batch of
//! inserts is one transaction, so a crash loses at most the batch in flight.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
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

/// The metadata store.
pub struct Store {
    conn: Connection,
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
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
                UNIQUE (model, path)
            );
            CREATE INDEX IF NOT EXISTS images_model_hash ON images (model, hash);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .context("creating the metadata schema")?;
        Ok(Self { conn })
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

    /// An embedding already computed for this content (any path), if one exists.
    pub fn embedding_by_hash(&self, model: &str, hash: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT embedding FROM images WHERE model = ?1 AND hash = ?2 LIMIT 1",
                params![model, hash],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(|b| from_blob(&b)))
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
                "INSERT INTO images (model, path, hash, split, category, width, height, embedding)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
                    to_blob(&r.embedding)
                ])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok((ids, replaced))
    }

    /// Deletes rows by id; returns how many existed.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut del = tx.prepare_cached("DELETE FROM images WHERE id = ?1")?;
            for id in ids {
                n += del.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Every (id, embedding) of `model`, in id order: the input to rebuild an index.
    pub fn all_vectors(&self, model: &str) -> Result<(Vec<i64>, Vec<f32>)> {
        let mut st = self
            .conn
            .prepare("SELECT id, embedding FROM images WHERE model = ?1 ORDER BY id")?;
        let mut ids = Vec::new();
        let mut data = Vec::new();
        let mut rows = st.query([model])?;
        while let Some(r) = rows.next()? {
            ids.push(r.get(0)?);
            data.extend(from_blob(&r.get::<_, Vec<u8>>(1)?));
        }
        Ok((ids, data))
    }

    /// Rows by id (missing ids are skipped).
    pub fn rows(&self, ids: &[i64]) -> Result<HashMap<i64, ImageRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, path, hash, split, category FROM images WHERE id = ?1")?;
        let mut out = HashMap::new();
        for id in ids {
            if let Some(row) = st
                .query_row([id], |r| {
                    Ok(ImageRow {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        hash: r.get(2)?,
                        split: r.get(3)?,
                        category: r.get(4)?,
                    })
                })
                .optional()?
            {
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
            Ok((
                ImageRow {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    hash: r.get(2)?,
                    split: r.get(3)?,
                    category: r.get(4)?,
                },
                from_blob(&r.get::<_, Vec<u8>>(5)?),
            ))
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
                |r| {
                    Ok((
                        ImageRow {
                            id: r.get(0)?,
                            path: r.get(1)?,
                            hash: r.get(2)?,
                            split: r.get(3)?,
                            category: r.get(4)?,
                        },
                        from_blob(&r.get::<_, Vec<u8>>(5)?),
                    ))
                },
            )
            .optional()?)
    }

    /// (count, sum of ids) for `model`: a cheap fingerprint of what the index must contain.
    pub fn fingerprint(&self, model: &str) -> Result<String> {
        let (n, s): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(id), 0) FROM images WHERE model = ?1",
            [model],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(format!("{n}:{s}"))
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
            Some(vec![2.0, -2.0])
        );
        let (new, replaced) = s.insert_batch("m", &[img("/a.png", "h3", 3.0)]).unwrap();
        assert_eq!(replaced, vec![ids[0]]);
        let (all, data) = s.all_vectors("m").unwrap();
        assert_eq!(all, vec![ids[1], new[0]]);
        assert_eq!(data, vec![2.0, -2.0, 3.0, -3.0]);
        assert_eq!(
            s.fingerprint("m").unwrap(),
            format!("2:{}", ids[1] + new[0])
        );
        assert_eq!(s.remove(&[ids[1]]).unwrap(), 1);
        assert_eq!(
            s.counts("m").unwrap(),
            vec![("train".into(), "cat".into(), 1)]
        );
        assert_eq!(s.rows_under("m", "/a").unwrap().len(), 1);
        s.set_meta("k", "v").unwrap();
        assert_eq!(s.meta("k").unwrap().as_deref(), Some("v"));
    }
}
