//! History: what the server has analysed, by content hash, so a result has a permanent URL
//! and the same image is answered from here at once; plus the files it refused, for the
//! dashboard, and the dataset page's jobs (so one the server was killed during is shown as
//! interrupted after a restart, not forgotten). Its own SQLite file (`history.sqlite`, WAL) beside the index metadata: the index
//! is about the dataset, this is about the server's visitors. Hits are not stored: they are
//! searched again from the stored embedding, so they always reflect the current index.

use anyhow::{Context, Result};
use app::types::{JobRequest, JobState, JobStatus, StageTimings, TextAnalysis};
use kadr_engine::store::{from_blob, to_blob};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// One analysed image.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub hash: String,
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub embedding: Vec<f32>,
    pub text: TextAnalysis,
    pub timings: StageTimings,
    pub created_at: i64,
    /// Category of the image when it is itself an indexed image.
    pub indexed_category: Option<String>,
}

/// The analyses and refusals store.
pub struct History {
    conn: Connection,
}

const COLUMNS: &str =
    "hash, name, width, height, embedding, text_json, timings_json, created_at, indexed_category";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let json_err = |i, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Record {
        hash: r.get(0)?,
        name: r.get(1)?,
        width: r.get(2)?,
        height: r.get(3)?,
        embedding: from_blob(&r.get::<_, Vec<u8>>(4)?),
        text: serde_json::from_str(&r.get::<_, String>(5)?).map_err(|e| json_err(5, e))?,
        timings: serde_json::from_str(&r.get::<_, String>(6)?).map_err(|e| json_err(6, e))?,
        created_at: r.get(7)?,
        indexed_category: r.get(8)?,
    })
}

impl History {
    /// Opens (creating if needed) the history at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = kadr_engine::store::open_sqlite(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS analyses (
                model TEXT NOT NULL,
                hash TEXT NOT NULL,
                name TEXT NOT NULL,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                embedding BLOB NOT NULL,
                text_json TEXT NOT NULL,
                timings_json TEXT NOT NULL,
                created_at INTEGER NOT NULL DEFAULT (unixepoch()),
                indexed_category TEXT,
                PRIMARY KEY (model, hash)
            );
            CREATE TABLE IF NOT EXISTS refusals (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                reason TEXT NOT NULL,
                at INTEGER NOT NULL DEFAULT (unixepoch())
            );
            CREATE TABLE IF NOT EXISTS jobs (
                id INTEGER PRIMARY KEY,
                request_json TEXT NOT NULL,
                status_json TEXT NOT NULL
            );",
        )
        .context("creating the history schema")?;
        Ok(Self { conn })
    }

    /// The analysis of content `hash` under `model`.
    pub fn get(&self, model: &str, hash: &str) -> Result<Option<Record>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM analyses WHERE model = ?1 AND hash = ?2"),
                params![model, hash],
                record,
            )
            .optional()?)
    }

    /// Records an analysis (the first one of a content wins; later ones change nothing).
    pub fn put(&self, model: &str, r: &Record) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT OR IGNORE INTO analyses (model, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                model,
                r.hash,
                r.name,
                r.width,
                r.height,
                to_blob(&r.embedding),
                serde_json::to_string(&r.text)?,
                serde_json::to_string(&r.timings)?,
                r.created_at,
                r.indexed_category,
            ],
        )?;
        Ok(())
    }

    /// Every analysis under `model`, oldest first.
    pub fn all(&self, model: &str) -> Result<Vec<Record>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM analyses WHERE model = ?1 ORDER BY created_at, hash"
        ))?;
        let rows = st.query_map([model], record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a refused file.
    pub fn refuse(&self, name: &str, reason: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO refusals (name, reason) VALUES (?1, ?2)",
            params![name, reason],
        )?;
        Ok(())
    }

    /// Records a job and what it was asked to do (a new one, or its progress).
    pub fn put_job(&self, job: &JobStatus, request: &JobRequest) -> Result<()> {
        self.conn.execute(
            "INSERT INTO jobs (id, request_json, status_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET status_json = excluded.status_json",
            params![
                job.id as i64,
                serde_json::to_string(request)?,
                serde_json::to_string(job)?
            ],
        )?;
        Ok(())
    }

    /// Every job with its request, oldest first.
    pub fn jobs(&self) -> Result<Vec<(JobStatus, JobRequest)>> {
        let mut st = self
            .conn
            .prepare("SELECT status_json, request_json FROM jobs ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (status, request) = row?;
            Ok((
                serde_json::from_str(&status).context("a stored job")?,
                serde_json::from_str(&request).context("a stored job's request")?,
            ))
        })
        .collect()
    }

    /// Marks the jobs recorded as running as interrupted: the process that ran them is gone
    /// (call once, when the server starts). Returns how many there were.
    pub fn interrupt_running(&self) -> Result<usize> {
        let mut n = 0;
        for (mut job, request) in self.jobs()? {
            if job.state == JobState::Running {
                job.state = JobState::Interrupted;
                job.message = format!(
                    "interrupted at {}/{}: the server stopped while this job ran; what it had \
                     done is kept, run it again to finish",
                    job.done, job.total
                );
                self.put_job(&job, &request)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether any analysis (under any model) is of content `hash`.
    pub fn has_hash(&self, hash: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM analyses WHERE hash = ?1 LIMIT 1",
                [hash],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Refusals counted by reason, most frequent first.
    pub fn refusals(&self) -> Result<Vec<(String, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT reason, count(*) AS n FROM refusals GROUP BY reason ORDER BY n DESC, reason",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::types::TextSource;

    #[test]
    fn records_round_trip_and_refusals_count() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.sqlite")).unwrap();
        let r = Record {
            hash: "ab".into(),
            name: "a.png".into(),
            width: 3,
            height: 4,
            embedding: vec![0.5, -0.25],
            text: TextAnalysis {
                source: TextSource::ImagenetLabels,
                caption: None,
                labels: vec![],
            },
            timings: StageTimings {
                embed_ms: 12.5,
                ..Default::default()
            },
            created_at: 100,
            indexed_category: None,
        };
        h.put("m", &r).unwrap();
        h.put(
            "m",
            &Record {
                name: "b.png".into(),
                ..r.clone()
            },
        )
        .unwrap();
        assert_eq!(h.get("m", "ab").unwrap(), Some(r.clone()));
        assert_eq!(h.get("other", "ab").unwrap(), None);
        assert_eq!(h.all("m").unwrap(), vec![r]);
        h.refuse("x.txt", "not an image").unwrap();
        h.refuse("y.txt", "not an image").unwrap();
        h.refuse("z.png", "truncated").unwrap();
        assert_eq!(
            h.refusals().unwrap(),
            vec![("not an image".into(), 2), ("truncated".into(), 1)]
        );
        assert!(h.has_hash("ab").unwrap() && !h.has_hash("cd").unwrap());
    }

    #[test]
    fn running_jobs_are_interrupted_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let job = |id, state| JobStatus {
            id,
            title: format!("job {id}"),
            state,
            done: 8,
            total: 20,
            message: String::new(),
        };
        let add = JobRequest::AddFolder {
            folder: "/data/x".into(),
        };
        {
            let h = History::open(&path).unwrap();
            h.put_job(&job(1, JobState::Done), &JobRequest::Reindex)
                .unwrap();
            h.put_job(&job(2, JobState::Running), &add).unwrap();
        }
        let h = History::open(&path).unwrap();
        assert_eq!(h.interrupt_running().unwrap(), 1);
        let jobs = h.jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].0.state, JobState::Done);
        assert_eq!((jobs[1].0.state, &jobs[1].1), (JobState::Interrupted, &add));
        assert!(jobs[1].0.message.contains("8/20"), "{}", jobs[1].0.message);
        assert_eq!(h.interrupt_running().unwrap(), 0);
    }
}
