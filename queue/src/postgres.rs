//! PostgreSQL backend: the production store.
//!
//! - claims run in one short transaction: distinct projects with due work (a recursive skip-scan
//!   of the partial `available` index), row locks on the limits of those projects, their running
//!   counts, then one `UPDATE … FROM (LATERAL … FOR UPDATE SKIP LOCKED)` per claim batch;
//! - acknowledgements are applied in one statement per batch (`unnest` arrays);
//! - enqueue sends one `NOTIFY roundhouse_jobs` per transaction (Postgres folds duplicates), never
//!   one per row; workers also poll, so a lost notification only costs latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use crate::backend::{
    Backend, CancelOutcome, Candidate, ClaimRequest, DepthRow, HeartbeatReply, JobFilter, MAX_PROJECTS_PER_CLAIM,
    ProjectLimits, QueueStats, RescueReport, Wakeup, fair_quotas, refill_tokens, room,
};
use crate::error::{QueueError, Result};
use crate::job::{Ack, ClaimedJob, Enqueued, JobId, JobPolicy, JobRecord, JobState, Lease, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord, PipelineState, StepRecord};
use crate::progress::{AckedRow, Progress, expired_lease_ack};

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
    rotation: AtomicUsize,
    last_promotion_ms: AtomicI64,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresQueue {
    /// Connects, applies migrations and starts listening for new-work notifications.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| QueueError::Unavailable {
            backend: NAME,
            message: format!("invalid PostgreSQL URL: {e}"),
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
        })?;
        let notify = Arc::new(Wakeup::default());
        let listener = tokio::spawn(listen(pool.clone(), notify.clone()));
        Ok(Self {
            pool,
            notify,
            rotation: AtomicUsize::new(0),
            last_promotion_ms: AtomicI64::new(0),
            listener,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues inside the caller's transaction: the jobs commit with the caller's rows or not at all.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            out.extend(insert_jobs(conn, chunk, false).await?);
        }
        notify_workers(conn).await?;
        Ok(out)
    }

    /// Enqueues a pipeline inside the caller's transaction.
    pub async fn enqueue_pipeline_in(
        &self,
        conn: &mut PgConnection,
        pipeline: NewPipeline,
    ) -> Result<PipelineEnqueued> {
        let plan = pipeline.plan()?;
        // Serialise enqueues that share a key, so that two concurrent runs cannot both miss each
        // other (both surviving a supersede, or both passing the unique check). Keys are locked in
        // one order everywhere, so two enqueues cannot deadlock.
        let mut keys: Vec<&str> = [&pipeline.supersede_key, &pipeline.unique_key]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        if !keys.is_empty() {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM (SELECT unnest($1::text[]) AS k ORDER BY 1) s",
            )
            .bind(&keys)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        }
        if let Some(key) = &pipeline.unique_key {
            let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM roundhouse_pipelines WHERE unique_key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
            if let Some(id) = existing {
                return Ok(PipelineEnqueued {
                    id,
                    duplicate: true,
                    superseded: vec![],
                });
            }
        }
        let mut superseded = Vec::new();
        if let Some(key) = &pipeline.supersede_key {
            superseded = supersede(conn, key).await?;
        }
        // The run and all its steps in one statement; the same statement wakes the workers.
        let steps: Vec<&NewJob> = plan.iter().map(|p| &p.step.job).collect();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH p AS (
                 INSERT INTO roundhouse_pipelines (project, name, supersede_key, unique_key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (unique_key) DO NOTHING RETURNING id),
             steps AS (
                 INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
                     backoff_base_ms, backoff_max_ms, run_at, unique_key, pipeline_id, step, needs, dependents,
                     deps_remaining)
                 SELECT t.kind, t.project, t.payload,
                     CASE WHEN jsonb_array_length(t.needs) > 0 THEN 'pending' WHEN t.run_at > now() THEN 'scheduled'
                          ELSE 'available' END,
                     t.priority, t.max_attempts, t.timeout_ms, t.base_ms, t.max_ms, coalesce(t.run_at, now()),
                     t.unique_key, p.id, t.step,
                     ARRAY(SELECT jsonb_array_elements_text(t.needs)),
                     ARRAY(SELECT jsonb_array_elements_text(t.dependents)), jsonb_array_length(t.needs)
                 FROM p, unnest($5::text[], $6::text[], $7::jsonb[], $8::int2[], $9::int4[], $10::int8[], $11::int8[],
                                $12::int8[], $13::timestamptz[], $14::text[], $15::text[], $16::jsonb[], $17::jsonb[])
                      AS t(kind, project, payload, priority, max_attempts, timeout_ms, base_ms, max_ms, run_at,
                           unique_key, step, needs, dependents)
                 RETURNING 1)
             SELECT p.id, (SELECT count(*) FROM steps) AS steps, pg_notify('{CHANNEL}', '') FROM p"
        )))
        .bind(&pipeline.project)
        .bind(&pipeline.name)
        .bind(&pipeline.supersede_key)
        .bind(&pipeline.unique_key)
        .bind(steps.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.project.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.policy.priority).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.policy.max_attempts as i32).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.policy.timeout_ms()).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|j| j.policy.backoff.base.as_millis() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            steps
                .iter()
                .map(|j| j.policy.backoff.max.as_millis() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(steps.iter().map(|j| j.unique_key.as_deref()).collect::<Vec<_>>())
        .bind(plan.iter().map(|p| p.step.name.as_str()).collect::<Vec<_>>())
        .bind(plan.iter().map(|p| serde_json::json!(p.step.needs)).collect::<Vec<_>>())
        .bind(plan.iter().map(|p| serde_json::json!(p.dependents)).collect::<Vec<_>>())
        .fetch_optional(&mut *conn)
        .await
        .map_err(
            |e| match e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
                true => step_key_taken(
                    &plan
                        .iter()
                        .filter(|p| p.step.job.unique_key.is_some())
                        .map(|p| p.step.name.as_str())
                        .collect::<Vec<_>>()
                        .join("`, `"),
                ),
                false => err(e),
            },
        )?
        .ok_or_else(|| {
            QueueError::InvalidPipeline("a pipeline with this unique key was enqueued concurrently".into())
        })?;
        let id: i64 = row.try_get("id").map_err(err)?;
        Ok(PipelineEnqueued {
            id,
            duplicate: false,
            superseded,
        })
    }

    /// Makes due `scheduled` jobs available; at most every 50 ms per process.
    async fn promote_due(&self) -> Result<()> {
        let now_ms = Utc::now().timestamp_millis();
        let last = self.last_promotion_ms.load(Ordering::Relaxed);
        if now_ms - last < 50
            || self
                .last_promotion_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        sqlx::query(
            "UPDATE roundhouse_jobs SET state = 'available' WHERE id IN (
                 SELECT id FROM roundhouse_jobs WHERE state = 'scheduled' AND run_at <= now()
                 ORDER BY run_at LIMIT 5000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }
}

async fn listen(pool: PgPool, notify: Arc<Wakeup>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed; workers fall back to polling");
                } else {
                    // Wake pollers after a (re)connect: notifications may have been missed.
                    notify.wake();
                    while listener.recv().await.is_ok() {
                        notify.wake();
                    }
                }
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

/// The bulk INSERT of one chunk of jobs, from arrays (one row per job).
const INSERT_JOBS: &str =
    "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
             backoff_base_ms, backoff_max_ms, run_at, unique_key)
         SELECT kind, project, payload, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
             priority, max_attempts, timeout_ms, base_ms, max_ms, coalesce(run_at, now()), unique_key
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int2[], $5::int4[], $6::int8[], $7::int8[], $8::int8[],
                     $9::timestamptz[], $10::text[])
              AS t(kind, project, payload, priority, max_attempts, timeout_ms, base_ms, max_ms, run_at, unique_key)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
         RETURNING id, unique_key";

/// Inserts one chunk of jobs with a single statement; resolves unique-key conflicts to the
/// existing job. With `notify`, the same statement wakes workers (one round trip in autocommit).
async fn insert_jobs(conn: &mut PgConnection, jobs: &[NewJob], notify: bool) -> Result<Vec<Enqueued>> {
    let sql = if notify {
        format!(
            "WITH ins AS ({INSERT_JOBS})
             SELECT ins.id, ins.unique_key FROM ins LEFT JOIN (SELECT pg_notify('{CHANNEL}', '')) n ON true"
        )
    } else {
        INSERT_JOBS.to_string()
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.project.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.policy.priority).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.policy.max_attempts as i32).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.policy.timeout_ms()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.policy.backoff.base.as_millis() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.policy.backoff.max.as_millis() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.unique_key.as_deref()).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;

    // Ids come from one sequence in insertion order, which follows the input order.
    let mut unkeyed: Vec<i64> = Vec::new();
    let mut keyed = std::collections::HashMap::new();
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(err)?;
        match row.try_get::<Option<String>, _>("unique_key").map_err(err)? {
            Some(key) => {
                keyed.insert(key, id);
            }
            None => unkeyed.push(id),
        }
    }
    unkeyed.sort_unstable();
    let missing: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.unique_key.as_deref())
        .filter(|k| !keyed.contains_key(*k))
        .collect();
    let mut existing = std::collections::HashMap::new();
    if !missing.is_empty() {
        for row in sqlx::query("SELECT id, unique_key FROM roundhouse_jobs WHERE unique_key = ANY($1)")
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?
        {
            existing.insert(
                row.try_get::<String, _>("unique_key").map_err(err)?,
                row.try_get::<i64, _>("id").map_err(err)?,
            );
        }
    }
    let mut unkeyed = unkeyed.into_iter();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let enqueued = match &job.unique_key {
            None => Enqueued {
                id: unkeyed
                    .next()
                    .ok_or_else(|| QueueError::Corrupt("INSERT returned too few rows".into()))?,
                duplicate: false,
            },
            // The first job with a newly inserted key owns it; later ones in the batch are duplicates.
            Some(key) => match keyed.remove(key) {
                Some(id) => {
                    existing.insert(key.clone(), id);
                    Enqueued { id, duplicate: false }
                }
                None => Enqueued {
                    id: *existing
                        .get(key)
                        .ok_or_else(|| QueueError::Corrupt(format!("unique key {key:?} vanished")))?,
                    duplicate: true,
                },
            },
        };
        out.push(enqueued);
    }
    Ok(out)
}

/// Locks a job's row for the rest of the transaction and returns its state.
async fn lock_job_state(conn: &mut PgConnection, id: JobId) -> Result<JobState> {
    let state: String = sqlx::query_scalar("SELECT state FROM roundhouse_jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(conn)
        .await
        .map_err(err)?;
    state.parse()
}

/// Cancels the unstarted jobs of the given pipelines and asks workers to stop their running ones.
/// Marks the running pipelines with `key` superseded and stops their jobs (queued ones are
/// cancelled, running ones asked to stop); returns the superseded runs. The jobs are stopped by a
/// statement of its own (not a CTE of this one, whose snapshot a concurrent claim could slip past).
async fn supersede(conn: &mut PgConnection, key: &str) -> Result<Vec<i64>> {
    let runs: Vec<i64> = sqlx::query_scalar(
        "UPDATE roundhouse_pipelines SET state = 'superseded', finished_at = now()
         WHERE supersede_key = $1 AND state = 'running' RETURNING id",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    for run in &runs {
        stop_pipeline_jobs(conn, *run, "superseded by a newer pipeline").await?;
    }
    Ok(runs)
}

/// Stops a run's jobs in one statement: queued ones are cancelled, running ones asked to stop. A
/// step being claimed meanwhile is waited for and re-checked on its new version (READ COMMITTED),
/// so it gets the cancel request as `running`.
async fn stop_pipeline_jobs(conn: &mut PgConnection, pipeline: i64, reason: &str) -> Result<()> {
    sqlx::query(
        "UPDATE roundhouse_jobs SET
             state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
             finished_at = CASE WHEN state = 'running' THEN finished_at ELSE now() END,
             last_error = CASE WHEN state = 'running' THEN last_error ELSE $2 END,
             cancel_requested = cancel_requested OR state = 'running'
         WHERE pipeline_id = $1 AND state IN ('pending', 'scheduled', 'available', 'running')",
    )
    .bind(pipeline)
    .bind(reason)
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    Ok(())
}

/// Applies finished attempts and moves their pipelines on. With `expired_only`, only jobs whose
/// lease has run out are touched (the reaper's path, racing live heartbeats safely).
async fn apply_acks(conn: &mut PgConnection, acks: &[Ack], expired_only: bool) -> Result<()> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut pipelines: Vec<i64> = acks.iter().filter_map(|a| a.pipeline).collect();
    pipelines.sort_unstable();
    pipelines.dedup();
    if !pipelines.is_empty() {
        // Serialises acks of one pipeline, so fan-in and completion see each other's effects.
        sqlx::query("SELECT id FROM roundhouse_pipelines WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&pipelines)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    }
    let mut acks = acks.to_vec();
    acks.sort_unstable_by_key(|a| a.lease.job);
    // A job whose cancellation was requested while it ran is cancelled, not run again, even
    // when its attempt failed, was handed back, or its worker died.
    let sql = format!(
        "UPDATE roundhouse_jobs j SET
             state = {EFFECTIVE},
             attempt = CASE WHEN {EFFECTIVE} = 'available' THEN j.attempt - 1 ELSE j.attempt END,
             run_at = coalesce(a.run_at, j.run_at),
             last_error = CASE WHEN {EFFECTIVE} <> a.state THEN 'cancelled while running'
                               ELSE coalesce(a.error, j.last_error) END,
             finished_at = CASE WHEN {EFFECTIVE} IN ('completed', 'dead', 'cancelled') THEN now() END,
             lease_expires_at = NULL,
             worker_id = NULL,
             cancel_requested = false
         FROM unnest($1::bigint[], $2::int4[], $3::text[], $4::timestamptz[], $5::text[])
              AS a(id, token, state, run_at, error)
         WHERE j.id = a.id AND j.claims = a.token AND j.state = 'running'
           AND (NOT $6 OR j.lease_expires_at < now())
         RETURNING j.pipeline_id, j.state, j.dependents, j.step"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(acks.iter().map(|a| a.lease.job).collect::<Vec<_>>())
        .bind(acks.iter().map(|a| a.lease.token as i32).collect::<Vec<_>>())
        .bind(acks.iter().map(|a| a.outcome.state().as_str()).collect::<Vec<_>>())
        .bind(acks.iter().map(|a| a.outcome.run_at()).collect::<Vec<_>>())
        .bind(acks.iter().map(|a| a.outcome.error()).collect::<Vec<_>>())
        .bind(expired_only)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;

    let rows = rows
        .iter()
        .map(|row| {
            Ok(AckedRow {
                pipeline: row.try_get("pipeline_id").map_err(err)?,
                state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
                step: row.try_get("step").map_err(err)?,
                dependents: row.try_get("dependents").map_err(err)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let progress = Progress::of(&rows);
    let mut wake = progress.wake;
    let (released_pipelines, released_steps): (Vec<i64>, Vec<String>) = progress.released.into_iter().unzip();
    if !released_steps.is_empty() {
        let released = sqlx::query(
            "UPDATE roundhouse_jobs d SET
                 deps_remaining = d.deps_remaining - c.n,
                 state = CASE WHEN d.deps_remaining = c.n THEN 'available' ELSE d.state END
             FROM (SELECT pipeline_id, step, count(*)::int AS n FROM unnest($1::bigint[], $2::text[]) AS u(pipeline_id, step)
                   GROUP BY 1, 2) c
             WHERE d.pipeline_id = c.pipeline_id AND d.step = c.step AND d.state = 'pending'",
        )
        .bind(&released_pipelines)
        .bind(&released_steps)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
        wake |= released.rows_affected() > 0;
    }
    for stopped in &progress.stopped {
        let changed = sqlx::query(
            "UPDATE roundhouse_pipelines SET state = $2, finished_at = now() WHERE id = $1 AND state = 'running'",
        )
        .bind(stopped.pipeline)
        .bind(stopped.state.as_str())
        .execute(&mut *conn)
        .await
        .map_err(err)?;
        if changed.rows_affected() > 0 {
            stop_pipeline_jobs(conn, stopped.pipeline, &stopped.reason).await?;
        }
    }
    if !progress.maybe_succeeded.is_empty() {
        sqlx::query(
            "UPDATE roundhouse_pipelines p SET state = 'succeeded', finished_at = now()
             WHERE p.id = ANY($1) AND p.state = 'running'
               AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs j WHERE j.pipeline_id = p.id AND j.state <> 'completed')",
        )
        .bind(&progress.maybe_succeeded)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    }
    if wake {
        notify_workers(conn).await?;
    }
    Ok(())
}

/// Leases up to each project's quota of available jobs, by priority then age, in one statement.
async fn take<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    quotas: &[(String, u32)],
    request: &ClaimRequest,
) -> Result<Vec<ClaimedJob>> {
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "WITH quota AS (SELECT * FROM unnest($1::text[], $2::int4[]) AS q(project, n)),
              picked AS (
                  SELECT c.id FROM quota q CROSS JOIN LATERAL (
                      SELECT id FROM roundhouse_jobs
                      WHERE state = 'available' AND project = q.project AND kind = ANY($3)
                      ORDER BY priority, id LIMIT q.n FOR UPDATE SKIP LOCKED) c)
         UPDATE roundhouse_jobs j SET state = 'running', attempt = j.attempt + 1, claims = j.claims + 1, worker_id = $4,
             attempted_at = now(), lease_expires_at = now() + $5 * interval '1 millisecond'
         FROM picked WHERE j.id = picked.id
         RETURNING {CLAIMED_COLUMNS}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(quotas.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
        .bind(quotas.iter().map(|(_, n)| *n as i32).collect::<Vec<_>>())
        .bind(&request.kinds)
        .bind(&request.worker)
        .bind(request.lease.as_millis() as i64)
        .fetch_all(conn)
        .await
        .map_err(err)?;
    rows.iter().map(claimed).collect()
}

fn claimed(row: &PgRow) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload: row.try_get("payload").map_err(err)?,
        attempt: row.try_get::<i32, _>("attempt").map_err(err)? as u32,
        lease_token: row.try_get::<i32, _>("claims").map_err(err)? as u32,
        policy: policy(row)?,
        created_at: row.try_get("created_at").map_err(err)?,
        run_at: row.try_get("run_at").map_err(err)?,
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
    })
}

fn policy(row: &PgRow) -> Result<JobPolicy> {
    Ok(JobPolicy::from_stored(
        row.try_get::<i16, _>("priority").map_err(err)? as i64,
        row.try_get::<i32, _>("max_attempts").map_err(err)? as i64,
        row.try_get("timeout_ms").map_err(err)?,
        row.try_get("backoff_base_ms").map_err(err)?,
        row.try_get("backoff_max_ms").map_err(err)?,
    ))
}

fn record(row: &PgRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload: row.try_get("payload").map_err(err)?,
        state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
        attempt: row.try_get::<i32, _>("attempt").map_err(err)? as u32,
        policy: policy(row)?,
        run_at: row.try_get("run_at").map_err(err)?,
        created_at: row.try_get("created_at").map_err(err)?,
        attempted_at: row.try_get("attempted_at").map_err(err)?,
        finished_at: row.try_get("finished_at").map_err(err)?,
        lease_expires_at: row.try_get("lease_expires_at").map_err(err)?,
        worker: row.try_get("worker_id").map_err(err)?,
        cancel_requested: row.try_get("cancel_requested").map_err(err)?,
        unique_key: row.try_get("unique_key").map_err(err)?,
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
        last_error: row.try_get("last_error").map_err(err)?,
    })
}

/// The state an acked job ends in: a requested cancellation overrides a retry or a hand-back.
const EFFECTIVE: &str =
    "(CASE WHEN j.cancel_requested AND a.state IN ('scheduled', 'available') THEN 'cancelled' ELSE a.state END)";

const CLAIMED_COLUMNS: &str =
    "j.id, j.kind, j.project, j.payload, j.attempt, j.claims, j.priority, j.max_attempts, j.timeout_ms,
    j.backoff_base_ms, j.backoff_max_ms, j.created_at, j.run_at, j.pipeline_id, j.step";

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
        if jobs.len() <= INSERT_CHUNK {
            // One autocommit statement inserts the jobs and wakes the workers.
            for job in &jobs {
                job.validate()?;
            }
            let mut conn = self.pool.acquire().await.map_err(err)?;
            return insert_jobs(&mut conn, &jobs, true).await;
        }
        let mut tx = self.pool.begin().await.map_err(err)?;
        let out = self.enqueue_in(&mut tx, jobs).await?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let out = self.enqueue_pipeline_in(&mut tx, pipeline).await?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        self.promote_due().await?;
        // Distinct projects with available work (a loose index scan, one probe per project), and
        // whether any of them has limits.
        let rows = sqlx::query(
            "WITH RECURSIVE p(project) AS (
                 (SELECT project FROM roundhouse_jobs WHERE state = 'available' ORDER BY project LIMIT 1)
                 UNION ALL
                 SELECT (SELECT j.project FROM roundhouse_jobs j WHERE j.state = 'available' AND j.project > p.project
                         ORDER BY j.project LIMIT 1)
                 FROM p WHERE p.project IS NOT NULL)
             SELECT p.project, EXISTS (SELECT 1 FROM roundhouse_project_limits l WHERE l.project = p.project) AS limited
             FROM p WHERE p.project IS NOT NULL LIMIT $1",
        )
        .bind(MAX_PROJECTS_PER_CLAIM as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut projects = Vec::with_capacity(rows.len());
        let mut any_limited = false;
        for row in &rows {
            projects.push(row.try_get::<String, _>("project").map_err(err)?);
            any_limited |= row.try_get::<bool, _>("limited").map_err(err)?;
        }
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        if !any_limited {
            // The common case: one autocommit statement; SKIP LOCKED keeps concurrent claims apart.
            let candidates: Vec<Candidate> = projects
                .into_iter()
                .map(|project| Candidate { project, room: None })
                .collect();
            return take(&self.pool, &fair_quotas(&candidates, request.limit, rotation), request).await;
        }
        let mut tx = self.pool.begin().await.map_err(err)?;
        let conn: &mut PgConnection = &mut tx;
        // Lock the limits of these projects first, then count their running jobs in a later
        // statement, whose snapshot sees every claim committed before the lock was granted.
        let limit_rows = sqlx::query(
            "SELECT project, max_running, jobs_per_minute, tokens, refilled_at, now() AS now
             FROM roundhouse_project_limits WHERE project = ANY($1) ORDER BY project FOR UPDATE",
        )
        .bind(&projects)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let mut limited = std::collections::HashMap::new();
        for row in &limit_rows {
            let limits = ProjectLimits {
                max_running: row
                    .try_get::<Option<i32>, _>("max_running")
                    .map_err(err)?
                    .map(|v| v as u32),
                jobs_per_minute: row
                    .try_get::<Option<i32>, _>("jobs_per_minute")
                    .map_err(err)?
                    .map(|v| v as u32),
            };
            let refilled_at: DateTime<Utc> = row.try_get("refilled_at").map_err(err)?;
            // now() is the transaction's start, which may precede the last refill by a claim
            // that held the lock meanwhile: never move the bucket's clock backwards.
            let now = row.try_get::<DateTime<Utc>, _>("now").map_err(err)?.max(refilled_at);
            let tokens = match limits.jobs_per_minute {
                Some(rate) => refill_tokens(row.try_get("tokens").map_err(err)?, refilled_at, now, rate),
                None => 0.0,
            };
            limited.insert(row.try_get::<String, _>("project").map_err(err)?, (limits, tokens, now));
        }
        let mut running = std::collections::HashMap::new();
        let capped: Vec<&String> = limited
            .iter()
            .filter(|(_, (l, _, _))| l.max_running.is_some())
            .map(|(p, _)| p)
            .collect();
        if !capped.is_empty() {
            for row in sqlx::query(
                "SELECT project, count(*) AS n FROM roundhouse_jobs WHERE state = 'running' AND project = ANY($1) GROUP BY project",
            )
            .bind(&capped)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?
            {
                running.insert(
                    row.try_get::<String, _>("project").map_err(err)?,
                    row.try_get::<i64, _>("n").map_err(err)? as u64,
                );
            }
        }
        let candidates: Vec<Candidate> = projects
            .iter()
            .map(|project| Candidate {
                project: project.clone(),
                room: limited
                    .get(project)
                    .and_then(|(limits, tokens, _)| room(limits, running.get(project).copied().unwrap_or(0), *tokens)),
            })
            .collect();
        let jobs = take(&mut *conn, &fair_quotas(&candidates, request.limit, rotation), request).await?;
        // Spend rate-limit tokens for what was claimed.
        let spent: Vec<(String, f64, DateTime<Utc>)> = limited
            .iter()
            .filter(|(_, (l, _, _))| l.jobs_per_minute.is_some())
            .map(|(project, (_, tokens, now))| {
                let used = jobs.iter().filter(|j| &j.project == project).count() as f64;
                (project.clone(), tokens - used, *now)
            })
            .collect();
        if !spent.is_empty() {
            sqlx::query(
                "UPDATE roundhouse_project_limits l SET tokens = s.tokens, refilled_at = s.at
                 FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) AS s(project, tokens, at)
                 WHERE l.project = s.project",
            )
            .bind(spent.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
            .bind(spent.iter().map(|s| s.1).collect::<Vec<_>>())
            .bind(spent.iter().map(|s| s.2).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        // Rows are locked in id order everywhere, so concurrent batches cannot deadlock.
        let mut sorted = leases.to_vec();
        sorted.sort_unstable_by_key(|l| l.job);
        let rows = sqlx::query(
            "UPDATE roundhouse_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM unnest($1::bigint[], $2::int4[]) AS l(id, token)
             WHERE j.id = l.id AND j.claims = l.token AND j.state = 'running' AND j.worker_id = $4
             RETURNING j.id, j.cancel_requested",
        )
        .bind(sorted.iter().map(|l| l.job).collect::<Vec<_>>())
        .bind(sorted.iter().map(|l| l.token as i32).collect::<Vec<_>>())
        .bind(lease.as_millis() as i64)
        .bind(worker)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut held = std::collections::HashSet::new();
        let mut reply = HeartbeatReply::default();
        for row in &rows {
            let id: i64 = row.try_get("id").map_err(err)?;
            held.insert(id);
            if row.try_get::<bool, _>("cancel_requested").map_err(err)? {
                reply.cancel.push(id);
            }
        }
        reply.lost = leases.iter().map(|l| l.job).filter(|id| !held.contains(id)).collect();
        Ok(reply)
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        apply_acks(&mut tx, &acks, false).await?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let pipeline: Option<Option<i64>> = sqlx::query_scalar("SELECT pipeline_id FROM roundhouse_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let pipeline = pipeline.ok_or(QueueError::JobNotFound(id))?;
        if let Some(p) = pipeline {
            sqlx::query("SELECT id FROM roundhouse_pipelines WHERE id = $1 FOR UPDATE")
                .bind(p)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let state = lock_job_state(&mut tx, id).await?;
        let outcome = match state {
            JobState::Running => {
                sqlx::query("UPDATE roundhouse_jobs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                CancelOutcome::Requested
            }
            s if s.is_terminal() => CancelOutcome::AlreadyFinished(s),
            _ => {
                sqlx::query(
                    "UPDATE roundhouse_jobs SET state = 'cancelled', finished_at = now(), last_error = 'cancelled by request' WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                if let Some(p) = pipeline {
                    sqlx::query("UPDATE roundhouse_pipelines SET state = 'cancelled', finished_at = now() WHERE id = $1 AND state = 'running'")
                        .bind(p)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    stop_pipeline_jobs(&mut tx, p, "pipeline cancelled").await?;
                }
                CancelOutcome::Cancelled
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(outcome)
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Lock order everywhere: pipeline row, then job rows.
        let pipeline: Option<i64> = sqlx::query_scalar("SELECT pipeline_id FROM roundhouse_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?
            .ok_or(QueueError::JobNotFound(id))?;
        if let Some(p) = pipeline {
            let run: String = sqlx::query_scalar("SELECT state FROM roundhouse_pipelines WHERE id = $1 FOR UPDATE")
                .bind(p)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            if run == PipelineState::Superseded.as_str() {
                return Err(QueueError::SupersededPipeline { id, pipeline: p });
            }
        }
        let state = lock_job_state(&mut tx, id).await?;
        if !matches!(state, JobState::Dead | JobState::Cancelled) {
            return Err(QueueError::NotRetryable { id, state });
        }
        if let Some(p) = pipeline {
            // Reopen the run: the retried step and the steps stopped with it wait again for what
            // they need, and start when it has completed.
            sqlx::query("UPDATE roundhouse_pipelines SET state = 'running', finished_at = NULL WHERE id = $1")
                .bind(p)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(
                "UPDATE roundhouse_jobs j SET state = 'pending', attempt = 0, run_at = now(), finished_at = NULL,
                     cancel_requested = false,
                     deps_remaining = (SELECT count(*) FROM roundhouse_jobs n
                                       WHERE n.pipeline_id = j.pipeline_id AND n.step = ANY(j.needs) AND n.state <> 'completed')
                 WHERE j.pipeline_id = $1 AND j.state IN ('cancelled', 'dead')",
            )
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'available' WHERE pipeline_id = $1 AND state = 'pending' AND deps_remaining = 0",
            )
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        } else {
            sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'available', attempt = 0, run_at = now(), finished_at = NULL,
                     cancel_requested = false WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        notify_workers(&mut tx).await?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn rescue_expired(&self) -> Result<RescueReport> {
        let rows = sqlx::query(
            "SELECT id, attempt, claims, priority, max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, pipeline_id,
                    worker_id
             FROM roundhouse_jobs WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let now = Utc::now();
        let mut report = RescueReport::default();
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let lease = Lease {
                job: row.try_get("id").map_err(err)?,
                token: row.try_get::<i32, _>("claims").map_err(err)? as u32,
            };
            let attempt = row.try_get::<i32, _>("attempt").map_err(err)? as u32;
            let worker: Option<String> = row.try_get("worker_id").map_err(err)?;
            let pipeline = row.try_get("pipeline_id").map_err(err)?;
            acks.push(expired_lease_ack(
                lease,
                attempt,
                pipeline,
                &policy(row)?,
                worker.as_deref(),
                now,
                &mut report,
            ));
        }
        let mut tx = self.pool.begin().await.map_err(err)?;
        apply_acks(&mut tx, &acks, true).await?;
        tx.commit().await.map_err(err)?;
        Ok(report)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM roundhouse_jobs WHERE id IN (
                     SELECT j.id FROM roundhouse_jobs j
                     WHERE j.finished_at < $1 AND j.state IN ('completed', 'dead', 'cancelled')
                       AND (j.pipeline_id IS NULL OR EXISTS (
                           -- A run's steps go together, once the run is over and all of them are old.
                           SELECT 1 FROM roundhouse_pipelines p WHERE p.id = j.pipeline_id AND p.state <> 'running'
                             AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs o WHERE o.pipeline_id = p.id
                                             AND (o.finished_at IS NULL OR o.finished_at >= $1))))
                     LIMIT 10000)",
            )
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(err)?
            .rows_affected();
            total += deleted;
            if deleted < 10_000 {
                break;
            }
        }
        sqlx::query(
            "DELETE FROM roundhouse_pipelines p WHERE p.state <> 'running' AND p.finished_at < $1
               AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs j WHERE j.pipeline_id = p.id)",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(total)
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        sqlx::query("SELECT * FROM roundhouse_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .as_ref()
            .map(record)
            .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let states = (!filter.states.is_empty()).then(|| filter.state_names());
        sqlx::query(
            "SELECT * FROM roundhouse_jobs
             WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR project = $3) AND ($4::timestamptz IS NULL OR finished_at > $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(states)
        .bind(&filter.kind)
        .bind(&filter.project)
        .bind(filter.finished_after)
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(record)
        .collect()
    }

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        let Some(row) = sqlx::query("SELECT * FROM roundhouse_pipelines WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let steps = sqlx::query(
            "SELECT id, step, kind, state, attempt, needs, last_error FROM roundhouse_jobs WHERE pipeline_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(|s| {
            Ok(StepRecord {
                name: s.try_get::<Option<String>, _>("step").map_err(err)?.unwrap_or_default(),
                job: s.try_get("id").map_err(err)?,
                kind: s.try_get("kind").map_err(err)?,
                state: s.try_get::<String, _>("state").map_err(err)?.parse()?,
                attempt: s.try_get::<i32, _>("attempt").map_err(err)? as u32,
                needs: s.try_get("needs").map_err(err)?,
                last_error: s.try_get("last_error").map_err(err)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(PipelineRecord {
            id,
            project: row.try_get("project").map_err(err)?,
            name: row.try_get("name").map_err(err)?,
            state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
            supersede_key: row.try_get("supersede_key").map_err(err)?,
            created_at: row.try_get("created_at").map_err(err)?,
            finished_at: row.try_get("finished_at").map_err(err)?,
            steps,
        }))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let depth = sqlx::query(
            "SELECT kind, project, state, count(*) AS n FROM roundhouse_jobs
             WHERE state IN ('pending', 'scheduled', 'available', 'running', 'dead') GROUP BY kind, project, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(|r| {
            Ok(DepthRow {
                kind: r.try_get("kind").map_err(err)?,
                project: r.try_get("project").map_err(err)?,
                state: r.try_get::<String, _>("state").map_err(err)?.parse()?,
                count: r.try_get::<i64, _>("n").map_err(err)? as u64,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let oldest_available_seconds = sqlx::query(
            "SELECT kind, extract(epoch FROM now() - min(run_at))::float8 AS age FROM roundhouse_jobs
             WHERE state = 'available' GROUP BY kind",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("kind").map_err(err)?,
                r.try_get::<f64, _>("age").map_err(err)?.max(0.0),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(QueueStats {
            depth,
            oldest_available_seconds,
        })
    }

    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
        sqlx::query(
            "INSERT INTO roundhouse_project_limits (project, max_running, jobs_per_minute, tokens, refilled_at)
             VALUES ($1, $2, $3, coalesce($3, 0), now())
             ON CONFLICT (project) DO UPDATE SET max_running = $2, jobs_per_minute = $3,
                 tokens = least(roundhouse_project_limits.tokens, coalesce($3, 0))",
        )
        .bind(project)
        .bind(limits.max_running.map(|v| v as i32))
        .bind(limits.jobs_per_minute.map(|v| v as i32))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.notify.wait(timeout).await;
    }
}
