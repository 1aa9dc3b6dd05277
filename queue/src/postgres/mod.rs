//! PostgreSQL backend: the production store.
//!
//! - claims run in one short transaction: distinct projects with due work (a recursive skip-scan
//!   of the partial `available` index, or one probe after each project's claim cursor, see
//!   [`cursor`]), row locks on the limits of those projects, their running counts, then one
//!   `UPDATE … FROM (LATERAL … FOR UPDATE SKIP LOCKED)` per claim batch;
//! - acknowledgements are applied in one statement per batch (`unnest` arrays);
//! - enqueue sends one `NOTIFY roundhouse_jobs` per project and statement (where its first new
//!   row is, for claim cursors), never one per row; workers also poll, and a full walk every
//!   second bounds what a lost notification costs;
//! - the queue vacuums and analyzes its own tables when they need it ([`upkeep`]): claim cost
//!   stays flat under deep backlogs whether autovacuum runs or not.

mod claim;
mod completion;
mod cursor;
mod enqueue;
mod operators;
mod reaper;
#[cfg(test)]
mod tests;
pub mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use crate::backend::{
    Backend, CancelOutcome, ClaimRequest, HeartbeatReply, JobFilter, ProjectLimits, QueueStats, RescueReport, Wakeup,
};
use crate::error::{QueueError, Result};
use crate::job::{Ack, ClaimedJob, Enqueued, JobId, JobRecord, Lease, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord};

use completion::apply_acks;
use cursor::{ClaimCursors, Notice};

const NAME: &str = "postgres";
const CHANNEL: &str = "roundhouse_jobs";
/// Jobs per INSERT statement when enqueueing in bulk.
const INSERT_CHUNK: usize = 5_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

fn err(e: sqlx::Error) -> QueueError {
    QueueError::sql(NAME, e)
}

pub(crate) fn step_key_taken(step: &str) -> QueueError {
    QueueError::InvalidPipeline(format!(
        "step `{step}` has a unique key that another job already holds; drop the step's key or use the pipeline's"
    ))
}

pub struct PostgresQueue {
    pool: PgPool,
    notify: Arc<Wakeup>,
    cursors: Arc<ClaimCursors>,
    rotation: AtomicUsize,
    /// Where the next full walk's project scan starts (`claim.rs`).
    walk_from: std::sync::Mutex<String>,
    last_promotion_ms: AtomicI64,
    listener: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresQueue {
    fn drop(&mut self) {
        self.listener.abort();
        self.upkeep.abort();
    }
}

impl PostgresQueue {
    /// Connects, applies migrations and starts listening for new-work notifications.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| QueueError::Unavailable {
            backend: NAME,
            message: format!("invalid PostgreSQL URL: {e}"),
            source: None,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(err)?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (the API shares its pool so that enqueue can join its transactions).
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        MIGRATOR.run(&pool).await.map_err(|e| QueueError::Backend {
            backend: NAME,
            message: format!("migration failed: {e}"),
            source: Some(Box::new(e)),
        })?;
        let notify = Arc::new(Wakeup::default());
        let cursors = Arc::new(ClaimCursors::new(cursor::FULL_WALK_EVERY));
        let listener = tokio::spawn(listen(pool.clone(), notify.clone(), cursors.clone()));
        let upkeep = tokio::spawn(upkeep::upkeep_loop(pool.clone()));
        Ok(Self {
            pool,
            notify,
            cursors,
            rotation: AtomicUsize::new(0),
            walk_from: std::sync::Mutex::new(String::new()),
            last_promotion_ms: AtomicI64::new(0),
            listener,
            upkeep,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// After this process committed rows made available behind claim cursors (anything but a
    /// plain enqueue): its own next claim walks in full at once, not when the notification that
    /// tells every process comes back through LISTEN.
    fn made_available(&self, any: bool) {
        if any {
            self.cursors.notice(Notice::Reset);
        }
    }
}

/// Wakes workers on every notification and moves claim cursors back as it says
/// ([`cursor::Notice`]).
async fn listen(pool: PgPool, notify: Arc<Wakeup>, cursors: Arc<ClaimCursors>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed; workers fall back to polling");
                } else {
                    // After a (re)connect notifications may have been missed: wake pollers and
                    // walk in full.
                    cursors.notice(Notice::Reset);
                    notify.wake();
                    while let Ok(notification) = listener.recv().await {
                        cursors.notice(Notice::parse(notification.payload()));
                        notify.wake();
                    }
                }
                cursors.notice(Notice::Reset);
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the LISTEN connection; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn notify_workers(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .map_err(err)?;
    Ok(())
}

#[async_trait]
impl Backend for PostgresQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err)?;
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.enqueue_jobs(jobs).await
    }

    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let out = self.enqueue_pipeline_in(&mut tx, pipeline).await?;
        tx.commit().await.map_err(err)?;
        self.made_available(true);
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_jobs(request).await
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        self.renew_leases(worker, leases, lease).await
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        let mut tx = self.pool.begin_with(claim::HOT_PATH_BEGIN).await.map_err(err)?;
        let woke = apply_acks(&mut tx, &acks, false).await?;
        tx.commit().await.map_err(err)?;
        self.made_available(woke);
        Ok(())
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
