//! A job's log: lines go to the control-plane database in small batches (readable live through
//! the API, from any process) and are kept whole for the archive in S3 when the step ends. Known
//! secret values are masked before a line leaves the worker.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::db::{Conn, query, query_as, query_scalar};
use crate::{LogLine, Result, Store, now_ms};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines kept for the archive; a runaway build log is cut (the database has it all).
const ARCHIVE_LIMIT_BYTES: usize = 16 << 20;
const BATCH: usize = 256;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct JobLog {
    tx: mpsc::UnboundedSender<String>,
    redact: Arc<RwLock<Vec<String>>>,
}

/// The writer behind a [`JobLog`]; [`finish`](Self::finish) flushes and returns the whole text.
pub struct JobLogWriter {
    log: JobLog,
    task: JoinHandle<String>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl JobLog {
    /// Opens the log of `job_id`, continuing its numbering (a retry appends to earlier attempts).
    /// `secrets` are masked as `***` in every line.
    pub async fn open(store: Arc<Store>, job_id: i64, secrets: Vec<String>) -> Result<JobLogWriter> {
        // Numbering on from the last line: a guessed start would collide with (and lose) lines.
        let first_seq = store.last_log_seq(job_id).await? + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, finished) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(write_lines(store, job_id, first_seq, rx, finished));
        let log = JobLog {
            tx,
            redact: Arc::default(),
        };
        for secret in secrets {
            log.mask(&secret);
        }
        Ok(JobLogWriter { log, task, done })
    }

    /// Masks `secret` (and each of its lines) in every later line.
    pub fn mask(&self, secret: &str) {
        let mut redact = self.redact.write().expect("mask list");
        for part in std::iter::once(secret).chain(secret.lines()) {
            let part = part.trim();
            // Very short values would mask ordinary words without protecting anything.
            if part.len() >= 4 && !redact.iter().any(|s| s == part) {
                redact.push(part.to_string());
            }
        }
        // Longest first, so a value is never half-masked by one of its own lines.
        redact.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every masked value replaced by `***` (and NULs, which no database stores, by
    /// `\u{fffd}`).
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.replace('\0', "\u{fffd}");
        for secret in self.redact.read().expect("mask list").iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }

    /// Appends one line (split further on newlines).
    pub fn line(&self, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            let _ = self.tx.send(self.redact(line.trim_end_matches('\r')));
        }
    }
}

impl JobLogWriter {
    pub fn log(&self) -> &JobLog {
        &self.log
    }

    /// Flushes every line written so far and returns the log's text for the archive. Clones of
    /// the [`JobLog`] may outlive this; lines they write afterwards are dropped.
    pub async fn finish(self) -> String {
        let JobLogWriter { log, task, done } = self;
        drop(log);
        let _ = done.send(());
        task.await.unwrap_or_default()
    }
}

async fn write_lines(
    store: Arc<Store>,
    job_id: i64,
    mut seq: i64,
    mut rx: mpsc::UnboundedReceiver<String>,
    mut finished: tokio::sync::oneshot::Receiver<()>,
) -> String {
    let mut archive = String::new();
    let mut batch: Vec<LogLine> = Vec::new();
    // Lines reach readers at most FLUSH_EVERY after they were written, however steady the stream.
    let mut flush_at = tokio::time::Instant::now();
    let mut closing = false;
    loop {
        let closed = tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    if archive.len() < ARCHIVE_LIMIT_BYTES {
                        archive.push_str(&line);
                        archive.push('\n');
                    }
                    batch.push(LogLine { job_id, seq, at: chrono::Utc::now().timestamp_millis(), line });
                    seq += 1;
                    if batch.len() == 1 {
                        flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
                    }
                    if batch.len() < BATCH {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tokio::time::sleep_until(flush_at), if !batch.is_empty() => false,
            // The writer finished (or was dropped): what is queued now is the last of it.
            _ = &mut finished, if !closing => {
                closing = true;
                rx.close();
                continue;
            }
        };
        if !batch.is_empty() {
            // A lost batch costs log lines, never the job: the archive still has them.
            if let Err(e) = store.append_log(&batch).await {
                tracing::warn!(job_id, error = %e, lines = batch.len(), "could not store log lines");
            }
            batch.clear();
        }
        if closed {
            return archive;
        }
    }
}

/// The last sequence number of a job's log (0 when it has none).
pub(crate) async fn last_log_seq(conn: &mut Conn<'_>, job_id: i64) -> Result<i64> {
    let seq: Option<i64> = query_scalar("SELECT MAX(seq) FROM job_logs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Appends lines (numbered by the caller, who holds the job's lease) in one statement.
pub(crate) async fn append_log(conn: &mut Conn<'_>, lines: &[LogLine]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = (0..lines.len())
        .map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4))
        .collect();
    let sql = format!(
        "INSERT INTO job_logs (job_id, seq, at, line) VALUES {} ON CONFLICT (job_id, seq) DO NOTHING",
        rows.join(", ")
    );
    let mut insert = query(sql);
    for line in lines {
        insert = insert.bind(line.job_id).bind(line.seq).bind(line.at).bind(&line.line);
    }
    insert.execute(conn).await?;
    Ok(())
}

/// Lines of a job's log after `after_seq`, oldest first.
pub(crate) async fn read_log(conn: &mut Conn<'_>, job_id: i64, after_seq: i64, limit: i64) -> Result<Vec<LogLine>> {
    query_as::<LogLine>("SELECT * FROM job_logs WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
        .binds((job_id, after_seq, limit))
        .fetch_all(&mut *conn)
        .await
}

/// Deletes log lines written before `cutoff_ms` (their archive in S3 stays); returns how many.
pub(crate) async fn prune_logs(conn: &mut Conn<'_>, cutoff_ms: i64) -> Result<u64> {
    Ok(query("DELETE FROM job_logs WHERE at < $1")
        .bind(cutoff_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

impl Store {
    pub async fn last_log_seq(&self, job_id: i64) -> Result<i64> {
        self.read(async |conn| last_log_seq(conn, job_id).await).await
    }
    pub async fn append_log(&self, lines: &[LogLine]) -> Result<()> {
        self.write(async |conn| append_log(conn, lines).await).await
    }
    /// Deletes job log lines older than `age` (the job retention); the archived copies stay in S3.
    pub async fn prune_logs(&self, age: std::time::Duration) -> Result<u64> {
        let cutoff = now_ms() - age.as_millis() as i64;
        self.write(async |conn| prune_logs(conn, cutoff).await).await
    }
    pub async fn read_log(&self, job_id: i64, after_seq: i64, limit: i64) -> Result<Vec<LogLine>> {
        self.read(async |conn| read_log(conn, job_id, after_seq, limit).await)
            .await
    }
}
