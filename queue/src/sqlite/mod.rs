//! SQLite backend: the embedded single-node default (no external service).
//!
//! Every state change runs in a `BEGIN IMMEDIATE` transaction, so SQLite's single writer lock
//! serialises claims across every process sharing the file: caps and fairness are exact. The
//! database runs in WAL mode with `synchronous = NORMAL` (durable across process crashes; a power
//! loss may drop the last few commits). Workers in the same process are woken through an in-memory
//! notification, those in other processes by a doorbell ([`doorbell`]); all of them also poll.

mod claim;
mod completion;
mod decode;
#[cfg(unix)]
mod doorbell;
mod enqueue;
mod operators;
mod reaper;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

use crate::backend::{
    Backend, CancelOutcome, ClaimRequest, HeartbeatReply, JobFilter, ProjectLimits, QueueStats, RescueReport, Wakeup,
};
use crate::error::{QueueError, Result};
use crate::job::{Ack, ClaimedJob, Enqueued, JobId, JobRecord, Lease, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord};

const NAME: &str = "sqlite";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

fn err(e: sqlx::Error) -> QueueError {
    QueueError::sql(NAME, e)
}

pub struct SqliteQueue {
    pool: SqlitePool,
    notify: Arc<Wakeup>,
    rotation: AtomicUsize,
    writer: Mutex<()>,
    #[cfg(unix)]
    doorbells: Option<doorbell::Doorbells>,
}

impl SqliteQueue {
    /// Opens (creating if missing) `sqlite://PATH` or `sqlite::memory:` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| QueueError::Unavailable {
                backend: NAME,
                message: format!("invalid SQLite URL: {e}"),
                source: None,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let migration_failed = |e: sqlx::migrate::MigrateError| QueueError::Backend {
            backend: NAME,
            message: format!("migration failed: {e}"),
            source: Some(Box::new(e)),
        };
        // An in-memory database exists per connection: keep exactly one.
        let in_memory = url.contains(":memory:");
        if !in_memory {
            // Create the file, switch it to WAL and migrate on one connection before the pool
            // opens more: a second connection's `journal_mode=WAL` can fail with "database is
            // locked" (without waiting) while another connection is migrating a new file.
            let mut first = SqliteConnection::connect_with(&options).await.map_err(err)?;
            MIGRATOR.run(&mut first).await.map_err(migration_failed)?;
            first.close().await.map_err(err)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(err)?;
        if in_memory {
            MIGRATOR.run(&pool).await.map_err(migration_failed)?;
        }
        let notify = Arc::new(Wakeup::default());
        #[cfg(unix)]
        let doorbells = if in_memory {
            None
        } else {
            let database = pool.connect_options().get_filename().to_path_buf();
            match doorbell::Doorbells::open(&database, notify.clone()) {
                Ok(doorbells) => Some(doorbells),
                Err(e) => {
                    tracing::warn!(error = %e, database = %database.display(),
                        "cannot open the queue's doorbell; workers in other processes learn of new jobs by polling (1 s)");
                    None
                }
            }
        };
        Ok(Self {
            pool,
            notify,
            rotation: AtomicUsize::new(0),
            writer: Mutex::new(()),
            #[cfg(unix)]
            doorbells,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction (`BEGIN IMMEDIATE`). Writers of this process queue on an async lock
    /// first, so they never meet in SQLite's busy handler (whose sleeps of up to 100 ms made tail
    /// latency); other processes still wait there. Other stores sharing this database (the control
    /// plane) write through this too, so that their rows and their jobs commit together.
    pub async fn begin_write(&self) -> Result<(MutexGuard<'_, ()>, sqlx::Transaction<'static, sqlx::Sqlite>)> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        Ok((guard, tx))
    }

    /// Wakes waiting workers: this process's directly, other processes' through their doorbells.
    fn wake(&self) {
        self.notify.wake();
        #[cfg(unix)]
        if let Some(doorbells) = &self.doorbells {
            doorbells.ring();
        }
    }
}

#[async_trait]
impl Backend for SqliteQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err)?;
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let (_writer, mut tx) = self.begin_write().await?;
        let out = self.enqueue_in(&mut tx, jobs).await?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let (_writer, mut tx) = self.begin_write().await?;
        let out = self.enqueue_pipeline_in(&mut tx, pipeline).await?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_jobs(request).await
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        self.renew_leases(worker, leases, lease).await
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        self.acknowledge_batch(acks).await
    }

    async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        self.cancel_job(id).await
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        self.retry_job(id).await
    }

    async fn rescue_expired(&self) -> Result<RescueReport> {
        self.rescue_expired_leases().await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        self.prune_finished(before).await
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.read_job(id).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.list_matching_jobs(filter).await
    }

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        self.read_pipeline(id).await
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.read_stats().await
    }

    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
        self.write_project_limits(project, limits).await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.notify.wait(timeout).await;
    }
}
