//! SQLite backend: the embedded single-node default (no external service).
//!
//! Every state change runs in a `BEGIN IMMEDIATE` transaction, so SQLite's single writer lock
//! serialises claims across every process sharing the file: caps and fairness are exact. The
//! database runs in WAL mode with `synchronous = NORMAL` (durable across process crashes; a power
//! loss may drop the last few commits). Workers in the same process are woken through an in-memory
//! notification; other processes poll.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

use crate::backend::{
    Backend, CancelOutcome, Candidate, ClaimRequest, DepthRow, HeartbeatReply, JobFilter, MAX_PROJECTS_PER_CLAIM,
    ProjectLimits, QueueStats, RescueReport, Wakeup, fair_quotas, refill_tokens, room,
};
use crate::error::{QueueError, Result};
use crate::job::{
    Ack, ClaimedJob, Enqueued, JobId, JobPolicy, JobRecord, JobState, Lease, NewJob, Outcome, PipelineId,
};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord, StepRecord};
use crate::progress::{AckedRow, Progress, expired_lease_ack};

const NAME: &str = "sqlite";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

fn err(e: sqlx::Error) -> QueueError {
    QueueError::sql(NAME, e)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn parse_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| QueueError::Corrupt(format!("bad JSON list {text:?}: {e}")))
}

pub struct SqliteQueue {
    pool: SqlitePool,
    notify: Arc<Wakeup>,
    rotation: AtomicUsize,
    writer: Mutex<()>,
}

impl SqliteQueue {
    /// Opens (creating if missing) `sqlite://PATH` or `sqlite::memory:` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| QueueError::Unavailable {
                backend: NAME,
                message: format!("invalid SQLite URL: {e}"),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let migration_failed = |e: sqlx::migrate::MigrateError| QueueError::Backend {
            backend: NAME,
            message: format!("migration failed: {e}"),
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
        Ok(Self {
            pool,
            notify: Arc::new(Wakeup::default()),
            rotation: AtomicUsize::new(0),
            writer: Mutex::new(()),
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

    fn wake(&self) {
        self.notify.wake();
    }

    /// Enqueues inside the caller's transaction (which must be `BEGIN IMMEDIATE` to avoid
    /// lock upgrades failing under concurrency). Workers in this process are woken on success.
    pub async fn enqueue_in(&self, conn: &mut SqliteConnection, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        let now = ms(Utc::now());
        let mut out = Vec::with_capacity(jobs.len());
        for job in &jobs {
            out.push(insert_job(conn, job, now, None).await?);
        }
        self.wake();
        Ok(out)
    }

    /// Enqueues a pipeline inside the caller's transaction.
    pub async fn enqueue_pipeline_in(
        &self,
        conn: &mut SqliteConnection,
        pipeline: NewPipeline,
    ) -> Result<PipelineEnqueued> {
        let plan = pipeline.plan()?;
        if let Some(key) = &pipeline.unique_key {
            let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM roundhouse_pipelines WHERE unique_key = ?")
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
        let now = ms(Utc::now());
        let mut superseded = Vec::new();
        if let Some(key) = &pipeline.supersede_key {
            superseded = sqlx::query_scalar(
                "UPDATE roundhouse_pipelines SET state = 'superseded', finished_at = ?
                 WHERE supersede_key = ? AND state = 'running' RETURNING id",
            )
            .bind(now)
            .bind(key)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?;
            for id in &superseded {
                stop_pipeline_jobs(conn, *id, "superseded by a newer pipeline", now).await?;
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO roundhouse_pipelines (project, name, supersede_key, unique_key, created_at)
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&pipeline.project)
        .bind(&pipeline.name)
        .bind(&pipeline.supersede_key)
        .bind(&pipeline.unique_key)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
        for planned in plan {
            let step = StepColumns {
                pipeline: id,
                name: &planned.step.name,
                needs: &planned.step.needs,
                dependents: &planned.dependents,
            };
            if insert_job(conn, &planned.step.job, now, Some(step)).await?.duplicate {
                return Err(crate::postgres::step_key_taken(&planned.step.name));
            }
        }
        self.wake();
        Ok(PipelineEnqueued {
            id,
            duplicate: false,
            superseded,
        })
    }
}

struct StepColumns<'a> {
    pipeline: i64,
    name: &'a str,
    needs: &'a [String],
    dependents: &'a [String],
}

async fn insert_job(
    conn: &mut SqliteConnection,
    job: &NewJob,
    now: i64,
    step: Option<StepColumns<'_>>,
) -> Result<Enqueued> {
    let run_at = job.run_at.map(ms).unwrap_or(now);
    let deps = step.as_ref().map_or(0, |s| s.needs.len() as i64);
    let state = if deps > 0 {
        JobState::Pending
    } else if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
             backoff_base_ms, backoff_max_ms, run_at, created_at, unique_key, pipeline_id, step, needs, dependents,
             deps_remaining)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(&job.kind)
    .bind(&job.project)
    .bind(job.payload.to_string())
    .bind(state.as_str())
    .bind(job.policy.priority as i64)
    .bind(job.policy.max_attempts as i64)
    .bind(job.policy.timeout_ms())
    .bind(job.policy.backoff.base.as_millis() as i64)
    .bind(job.policy.backoff.max.as_millis() as i64)
    .bind(run_at)
    .bind(now)
    .bind(&job.unique_key)
    .bind(step.as_ref().map(|s| s.pipeline))
    .bind(step.as_ref().map(|s| s.name))
    .bind(step.as_ref().map_or_else(|| "[]".to_string(), |s| json_list(s.needs)))
    .bind(
        step.as_ref()
            .map_or_else(|| "[]".to_string(), |s| json_list(s.dependents)),
    )
    .bind(deps)
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?;
    match inserted {
        Some(id) => Ok(Enqueued { id, duplicate: false }),
        None => {
            let id: i64 = sqlx::query_scalar("SELECT id FROM roundhouse_jobs WHERE unique_key = ?")
                .bind(&job.unique_key)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            Ok(Enqueued { id, duplicate: true })
        }
    }
}

async fn stop_pipeline_jobs(conn: &mut SqliteConnection, pipeline: i64, reason: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE roundhouse_jobs SET state = 'cancelled', finished_at = ?, last_error = ?
         WHERE pipeline_id = ? AND state IN ('pending', 'scheduled', 'available')",
    )
    .bind(now)
    .bind(reason)
    .bind(pipeline)
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    sqlx::query("UPDATE roundhouse_jobs SET cancel_requested = 1 WHERE pipeline_id = ? AND state = 'running'")
        .bind(pipeline)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// Applies finished attempts and moves their pipelines on; returns whether work became available.
async fn apply_acks(conn: &mut SqliteConnection, acks: &[Ack], expired_only: bool) -> Result<bool> {
    let now = ms(Utc::now());
    let batch: Vec<serde_json::Value> = acks
        .iter()
        .map(|ack| {
            serde_json::json!([
                ack.lease.job,
                ack.lease.token,
                ack.outcome.state().as_str(),
                ack.outcome.run_at().map(ms),
                ack.outcome.error()
            ])
        })
        .collect();
    // A job whose cancellation was requested while it ran is cancelled, not run again, even
    // when its attempt failed, was handed back, or its worker died.
    const E: &str = "(CASE WHEN roundhouse_jobs.cancel_requested AND a.state IN ('scheduled', 'available') \
                     THEN 'cancelled' ELSE a.state END)";
    let sql = format!(
        "UPDATE roundhouse_jobs SET
             state = {E},
             attempt = CASE WHEN {E} = 'available' THEN roundhouse_jobs.attempt - 1 ELSE roundhouse_jobs.attempt END,
             run_at = coalesce(a.run_at, roundhouse_jobs.run_at),
             last_error = CASE WHEN {E} <> a.state THEN 'cancelled while running'
                               ELSE coalesce(a.error, roundhouse_jobs.last_error) END,
             finished_at = CASE WHEN {E} IN ('completed', 'dead', 'cancelled') THEN ?2 END,
             lease_expires_at = NULL, worker_id = NULL, cancel_requested = 0
         FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token,
                      json_extract(value, '$[2]') AS state, json_extract(value, '$[3]') AS run_at,
                      json_extract(value, '$[4]') AS error
               FROM json_each(?1)) AS a
         WHERE roundhouse_jobs.id = a.id AND roundhouse_jobs.claims = a.token AND roundhouse_jobs.state = 'running'
           AND (NOT ?3 OR roundhouse_jobs.lease_expires_at < ?2)
         RETURNING pipeline_id, state, step, dependents"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::Value::Array(batch).to_string())
        .bind(now)
        .bind(expired_only)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?
        .iter()
        .map(|row| {
            Ok(AckedRow {
                pipeline: row.try_get("pipeline_id").map_err(err)?,
                state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
                step: row.try_get("step").map_err(err)?,
                dependents: parse_list(&row.try_get::<String, _>("dependents").map_err(err)?)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let progress = Progress::of(&rows);
    let mut wake = progress.wake;
    for (pipeline, step) in &progress.released {
        let released = sqlx::query(
            "UPDATE roundhouse_jobs SET deps_remaining = deps_remaining - 1,
                 state = CASE WHEN deps_remaining = 1 THEN 'available' ELSE state END
             WHERE pipeline_id = ? AND step = ? AND state = 'pending'",
        )
        .bind(pipeline)
        .bind(step)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
        wake |= released.rows_affected() > 0;
    }
    for stopped in &progress.stopped {
        let changed = sqlx::query(
            "UPDATE roundhouse_pipelines SET state = ?, finished_at = ? WHERE id = ? AND state = 'running'",
        )
        .bind(stopped.state.as_str())
        .bind(now)
        .bind(stopped.pipeline)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
        if changed.rows_affected() > 0 {
            stop_pipeline_jobs(conn, stopped.pipeline, &stopped.reason, now).await?;
        }
    }
    for pipeline in &progress.maybe_succeeded {
        sqlx::query(
            "UPDATE roundhouse_pipelines SET state = 'succeeded', finished_at = ?
             WHERE id = ? AND state = 'running'
               AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs j WHERE j.pipeline_id = ? AND j.state <> 'completed')",
        )
        .bind(now)
        .bind(pipeline)
        .bind(pipeline)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    }
    Ok(wake)
}

fn policy(row: &SqliteRow) -> Result<JobPolicy> {
    Ok(JobPolicy::from_stored(
        row.try_get("priority").map_err(err)?,
        row.try_get("max_attempts").map_err(err)?,
        row.try_get("timeout_ms").map_err(err)?,
        row.try_get("backoff_base_ms").map_err(err)?,
        row.try_get("backoff_max_ms").map_err(err)?,
    ))
}

fn payload(row: &SqliteRow) -> Result<serde_json::Value> {
    let text: String = row.try_get("payload").map_err(err)?;
    serde_json::from_str(&text).map_err(|e| QueueError::Corrupt(format!("stored payload is not JSON: {e}")))
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(column).map_err(err)?.map(time))
}

fn claimed(row: &SqliteRow) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload: payload(row)?,
        attempt: row.try_get::<i64, _>("attempt").map_err(err)? as u32,
        lease_token: row.try_get::<i64, _>("claims").map_err(err)? as u32,
        policy: policy(row)?,
        created_at: time(row.try_get("created_at").map_err(err)?),
        run_at: time(row.try_get("run_at").map_err(err)?),
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
    })
}

/// A claimed row that cannot be read (e.g. a payload that is not JSON, written around the
/// queue) is dead-lettered with the reason, instead of failing every claim after it.
fn dead_letter(row: &SqliteRow, problem: QueueError) -> Result<Ack> {
    let id: i64 = row.try_get("id").map_err(err)?;
    tracing::error!(job = id, error = %problem, "dead-lettering a job whose stored row cannot be read");
    Ok(Ack {
        lease: Lease {
            job: id,
            token: row.try_get::<i64, _>("claims").map_err(err)? as u32,
        },
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        outcome: Outcome::Dead {
            error: format!("{problem}; fix or re-enqueue the job"),
        },
    })
}

fn record(row: &SqliteRow) -> Result<JobRecord> {
    // Operators must be able to inspect a dead-lettered job whose payload is not JSON.
    let payload = payload(row).or_else(|_| {
        Ok::<_, QueueError>(serde_json::json!({ "corrupt_payload": row.try_get::<String, _>("payload").map_err(err)? }))
    })?;
    Ok(JobRecord {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload,
        state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
        attempt: row.try_get::<i64, _>("attempt").map_err(err)? as u32,
        policy: policy(row)?,
        run_at: time(row.try_get("run_at").map_err(err)?),
        created_at: time(row.try_get("created_at").map_err(err)?),
        attempted_at: opt_time(row, "attempted_at")?,
        finished_at: opt_time(row, "finished_at")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        worker: row.try_get("worker_id").map_err(err)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested").map_err(err)? != 0,
        unique_key: row.try_get("unique_key").map_err(err)?,
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
        last_error: row.try_get("last_error").map_err(err)?,
    })
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
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let (_writer, mut tx) = self.begin_write().await?;
        let conn: &mut SqliteConnection = &mut tx;
        let now_at = Utc::now();
        let now = ms(now_at);
        sqlx::query(
            "UPDATE roundhouse_jobs SET state = 'available' WHERE id IN (
                 SELECT id FROM roundhouse_jobs WHERE state = 'scheduled' AND run_at <= ? ORDER BY run_at LIMIT 5000)",
        )
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
        let projects: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE p(project) AS (
                 SELECT (SELECT project FROM roundhouse_jobs WHERE state = 'available' ORDER BY project LIMIT 1)
                 UNION ALL
                 SELECT (SELECT j.project FROM roundhouse_jobs j WHERE j.state = 'available' AND j.project > p.project
                         ORDER BY j.project LIMIT 1)
                 FROM p WHERE p.project IS NOT NULL)
             SELECT project FROM p WHERE project IS NOT NULL LIMIT ?",
        )
        .bind(MAX_PROJECTS_PER_CLAIM as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        if projects.is_empty() {
            return Ok(Vec::new());
        }
        let project_list = json_list(&projects);
        let mut limited = std::collections::HashMap::new();
        for row in sqlx::query(
            "SELECT l.project, l.max_running, l.jobs_per_minute, l.tokens, l.refilled_at,
                    (SELECT count(*) FROM roundhouse_jobs r WHERE r.state = 'running' AND r.project = l.project) AS running
             FROM roundhouse_project_limits l WHERE l.project IN (SELECT value FROM json_each(?))",
        )
        .bind(&project_list)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?
        {
            let limits = ProjectLimits {
                max_running: row.try_get::<Option<i64>, _>("max_running").map_err(err)?.map(|v| v as u32),
                jobs_per_minute: row.try_get::<Option<i64>, _>("jobs_per_minute").map_err(err)?.map(|v| v as u32),
            };
            let tokens = match limits.jobs_per_minute {
                Some(rate) => refill_tokens(
                    row.try_get("tokens").map_err(err)?,
                    time(row.try_get("refilled_at").map_err(err)?),
                    now_at,
                    rate,
                ),
                None => 0.0,
            };
            let running = row.try_get::<i64, _>("running").map_err(err)? as u64;
            limited.insert(row.try_get::<String, _>("project").map_err(err)?, (limits, tokens, running));
        }
        let candidates: Vec<Candidate> = projects
            .iter()
            .map(|project| Candidate {
                project: project.clone(),
                room: limited
                    .get(project)
                    .and_then(|(limits, tokens, running)| room(limits, *running, *tokens)),
            })
            .collect();
        let quotas = fair_quotas(
            &candidates,
            request.limit,
            self.rotation.fetch_add(1, Ordering::Relaxed),
        );
        let kinds = json_list(&request.kinds);
        let lease_until = now + request.lease.as_millis() as i64;
        let mut jobs = Vec::new();
        let mut corrupt = Vec::new();
        for (project, n) in &quotas {
            let rows = sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'running', attempt = attempt + 1, claims = claims + 1, worker_id = ?,
                     attempted_at = ?,
                     lease_expires_at = ?
                 WHERE id IN (SELECT id FROM roundhouse_jobs
                              WHERE state = 'available' AND project = ? AND kind IN (SELECT value FROM json_each(?))
                              ORDER BY priority, id LIMIT ?)
                 RETURNING *",
            )
            .bind(&request.worker)
            .bind(now)
            .bind(lease_until)
            .bind(project)
            .bind(&kinds)
            .bind(*n as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?;
            for row in &rows {
                match claimed(row) {
                    Ok(job) => jobs.push(job),
                    Err(e) => corrupt.push(dead_letter(row, e)?),
                }
            }
            if let Some((limits, tokens, _)) = limited.get(project)
                && limits.jobs_per_minute.is_some()
            {
                sqlx::query("UPDATE roundhouse_project_limits SET tokens = ?, refilled_at = ? WHERE project = ?")
                    .bind(tokens - rows.len() as f64)
                    .bind(now)
                    .bind(project)
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
            }
        }
        if !corrupt.is_empty() {
            apply_acks(&mut tx, &corrupt, false).await?;
        }
        tx.commit().await.map_err(err)?;
        // RETURNING order is unspecified: keep priority order within the batch.
        jobs.sort_by_key(|j| (j.policy.priority, j.id));
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        let until = ms(Utc::now()) + lease.as_millis() as i64;
        let batch: Vec<serde_json::Value> = leases.iter().map(|l| serde_json::json!([l.job, l.token])).collect();
        let (_writer, mut tx) = self.begin_write().await?;
        let rows = sqlx::query(
            "UPDATE roundhouse_jobs SET lease_expires_at = ?2
             FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token FROM json_each(?1)) AS l
             WHERE roundhouse_jobs.id = l.id AND roundhouse_jobs.claims = l.token
               AND roundhouse_jobs.state = 'running' AND roundhouse_jobs.worker_id = ?3
             RETURNING id, cancel_requested",
        )
        .bind(serde_json::Value::Array(batch).to_string())
        .bind(until)
        .bind(worker)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        let mut held = std::collections::HashSet::new();
        let mut reply = HeartbeatReply::default();
        for row in &rows {
            let id: i64 = row.try_get("id").map_err(err)?;
            held.insert(id);
            if row.try_get::<i64, _>("cancel_requested").map_err(err)? != 0 {
                reply.cancel.push(id);
            }
        }
        reply.lost = leases.iter().map(|l| l.job).filter(|id| !held.contains(id)).collect();
        Ok(reply)
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let (_writer, mut tx) = self.begin_write().await?;
        let wake = apply_acks(&mut tx, &acks, false).await?;
        tx.commit().await.map_err(err)?;
        if wake {
            self.wake();
        }
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        let (_writer, mut tx) = self.begin_write().await?;
        let row = sqlx::query("SELECT state, pipeline_id FROM roundhouse_jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?
            .ok_or(QueueError::JobNotFound(id))?;
        let state: JobState = row.try_get::<String, _>("state").map_err(err)?.parse()?;
        let pipeline: Option<i64> = row.try_get("pipeline_id").map_err(err)?;
        let now = ms(Utc::now());
        let outcome = match state {
            JobState::Running => {
                sqlx::query("UPDATE roundhouse_jobs SET cancel_requested = 1 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                CancelOutcome::Requested
            }
            s if s.is_terminal() => CancelOutcome::AlreadyFinished(s),
            _ => {
                sqlx::query(
                    "UPDATE roundhouse_jobs SET state = 'cancelled', finished_at = ?, last_error = 'cancelled by request'
                     WHERE id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                if let Some(p) = pipeline {
                    sqlx::query(
                        "UPDATE roundhouse_pipelines SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'running'",
                    )
                    .bind(now)
                    .bind(p)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                    stop_pipeline_jobs(&mut tx, p, "pipeline cancelled", now).await?;
                }
                CancelOutcome::Cancelled
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(outcome)
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT j.state, j.pipeline_id, p.state AS run FROM roundhouse_jobs j
             LEFT JOIN roundhouse_pipelines p ON p.id = j.pipeline_id WHERE j.id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        .ok_or(QueueError::JobNotFound(id))?;
        let state: JobState = row.try_get::<String, _>("state").map_err(err)?.parse()?;
        let pipeline: Option<i64> = row.try_get("pipeline_id").map_err(err)?;
        if let Some(p) = pipeline
            && row.try_get::<Option<String>, _>("run").map_err(err)?.as_deref() == Some("superseded")
        {
            return Err(QueueError::SupersededPipeline { id, pipeline: p });
        }
        if !matches!(state, JobState::Dead | JobState::Cancelled) {
            return Err(QueueError::NotRetryable { id, state });
        }
        let now = ms(Utc::now());
        if let Some(p) = pipeline {
            // Reopen the run: the retried step and the steps stopped with it wait again for what
            // they need, and start when it has completed.
            sqlx::query("UPDATE roundhouse_pipelines SET state = 'running', finished_at = NULL WHERE id = ?")
                .bind(p)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'pending', attempt = 0, run_at = ?, finished_at = NULL,
                     cancel_requested = 0,
                     deps_remaining = (SELECT count(*) FROM roundhouse_jobs n
                                       WHERE n.pipeline_id = roundhouse_jobs.pipeline_id
                                         AND n.step IN (SELECT value FROM json_each(roundhouse_jobs.needs))
                                         AND n.state <> 'completed')
                 WHERE pipeline_id = ? AND state IN ('cancelled', 'dead')",
            )
            .bind(now)
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'available' WHERE pipeline_id = ? AND state = 'pending' AND deps_remaining = 0",
            )
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        } else {
            sqlx::query(
                "UPDATE roundhouse_jobs SET state = 'available', attempt = 0, run_at = ?, finished_at = NULL,
                     cancel_requested = 0 WHERE id = ?",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.wake();
        Ok(())
    }

    async fn rescue_expired(&self) -> Result<RescueReport> {
        let now_at = Utc::now();
        let rows = sqlx::query(
            "SELECT * FROM roundhouse_jobs WHERE state = 'running' AND lease_expires_at < ?
             ORDER BY lease_expires_at LIMIT 1000",
        )
        .bind(ms(now_at))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        if rows.is_empty() {
            return Ok(RescueReport::default());
        }
        let mut report = RescueReport::default();
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = record(row)?;
            let token = row.try_get::<i64, _>("claims").map_err(err)? as u32;
            let lease = Lease { job: job.id, token };
            acks.push(expired_lease_ack(
                lease,
                job.attempt,
                job.pipeline,
                &job.policy,
                job.worker.as_deref(),
                now_at,
                &mut report,
            ));
        }
        let (_writer, mut tx) = self.begin_write().await?;
        apply_acks(&mut tx, &acks, true).await?;
        tx.commit().await.map_err(err)?;
        self.wake();
        Ok(report)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        // Small batches, each its own transaction, so heartbeats and acks are never kept
        // waiting on the writer lock for long.
        let mut total = 0;
        loop {
            let (_writer, mut tx) = self.begin_write().await?;
            let deleted = sqlx::query(
                "DELETE FROM roundhouse_jobs WHERE id IN (
                     SELECT j.id FROM roundhouse_jobs j
                     WHERE j.finished_at < ?1 AND j.state IN ('completed', 'dead', 'cancelled')
                       AND (j.pipeline_id IS NULL OR EXISTS (
                           -- A run's steps go together, once the run is over and all of them are old.
                           SELECT 1 FROM roundhouse_pipelines p WHERE p.id = j.pipeline_id AND p.state <> 'running'
                             AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs o WHERE o.pipeline_id = p.id
                                             AND (o.finished_at IS NULL OR o.finished_at >= ?1))))
                     LIMIT 1000)",
            )
            .bind(ms(before))
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
            tx.commit().await.map_err(err)?;
            total += deleted;
            if deleted < 1000 {
                break;
            }
        }
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM roundhouse_pipelines WHERE state <> 'running' AND finished_at < ?
               AND NOT EXISTS (SELECT 1 FROM roundhouse_jobs j WHERE j.pipeline_id = roundhouse_pipelines.id)",
        )
        .bind(ms(before))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(total)
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        sqlx::query("SELECT * FROM roundhouse_jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .as_ref()
            .map(record)
            .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let states = (!filter.states.is_empty()).then(|| serde_json::Value::from(filter.state_names()).to_string());
        sqlx::query(
            "SELECT * FROM roundhouse_jobs
             WHERE (?1 IS NULL OR state IN (SELECT value FROM json_each(?1))) AND (?2 IS NULL OR kind = ?2)
               AND (?3 IS NULL OR project = ?3) AND (?4 IS NULL OR finished_at > ?4)
             ORDER BY id DESC LIMIT ?5",
        )
        .bind(states)
        .bind(&filter.kind)
        .bind(&filter.project)
        .bind(filter.finished_after.map(ms))
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(record)
        .collect()
    }

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        let Some(row) = sqlx::query("SELECT * FROM roundhouse_pipelines WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let steps = sqlx::query("SELECT * FROM roundhouse_jobs WHERE pipeline_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?
            .iter()
            .map(|s| {
                let job = record(s)?;
                Ok(StepRecord {
                    name: job.step.unwrap_or_default(),
                    job: job.id,
                    kind: job.kind,
                    state: job.state,
                    attempt: job.attempt,
                    needs: parse_list(&s.try_get::<String, _>("needs").map_err(err)?)?,
                    last_error: job.last_error,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(PipelineRecord {
            id,
            project: row.try_get("project").map_err(err)?,
            name: row.try_get("name").map_err(err)?,
            state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
            supersede_key: row.try_get("supersede_key").map_err(err)?,
            created_at: time(row.try_get("created_at").map_err(err)?),
            finished_at: opt_time(&row, "finished_at")?,
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
        let now = ms(Utc::now());
        let oldest_available_seconds = sqlx::query(
            "SELECT kind, min(run_at) AS oldest FROM roundhouse_jobs WHERE state = 'available' GROUP BY kind",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .map(|r| {
            let oldest: i64 = r.try_get("oldest").map_err(err)?;
            Ok((r.try_get("kind").map_err(err)?, ((now - oldest).max(0)) as f64 / 1000.0))
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
             VALUES (?1, ?2, ?3, coalesce(?3, 0), ?4)
             ON CONFLICT (project) DO UPDATE SET max_running = ?2, jobs_per_minute = ?3,
                 tokens = min(tokens, coalesce(?3, 0))",
        )
        .bind(project)
        .bind(limits.max_running.map(|v| v as i64))
        .bind(limits.jobs_per_minute.map(|v| v as i64))
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.notify.wait(timeout).await;
    }
}
