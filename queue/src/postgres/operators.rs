//! Operators' reads and controls: cancel and retry, one job, job lists, pipelines, stats, limits.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::backend::{CancelOutcome, DepthRow, JobFilter, ProjectLimits, QueueStats};
use crate::error::{QueueError, Result};
use crate::job::{JobId, JobRecord, JobState, PipelineId};
use crate::pipeline::{PipelineRecord, PipelineState, StepRecord};

use super::claim::policy;
use super::completion::stop_pipeline_jobs;
use super::{PostgresQueue, err, notify_workers};

impl PostgresQueue {
    pub(super) async fn cancel_job(&self, id: JobId) -> Result<CancelOutcome> {
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

    pub(super) async fn retry_job(&self, id: JobId) -> Result<()> {
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
        self.made_available(true);
        Ok(())
    }

    pub(super) async fn read_job(&self, id: JobId) -> Result<Option<JobRecord>> {
        sqlx::query("SELECT * FROM roundhouse_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .as_ref()
            .map(record)
            .transpose()
    }

    pub(super) async fn list_matching_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
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

    pub(super) async fn read_pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
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

    pub(super) async fn read_stats(&self) -> Result<QueueStats> {
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

    pub(super) async fn write_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
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
}

/// Locks a job's row for the rest of the transaction and returns its state.
pub(super) async fn lock_job_state(conn: &mut PgConnection, id: JobId) -> Result<JobState> {
    let state: String = sqlx::query_scalar("SELECT state FROM roundhouse_jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(conn)
        .await
        .map_err(err)?;
    state.parse()
}

pub(super) fn record(row: &PgRow) -> Result<JobRecord> {
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
