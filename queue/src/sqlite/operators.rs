//! Operators' reads and controls: cancel and retry, one job, job lists, pipelines, stats, limits.

use chrono::Utc;
use sqlx::Row;

use crate::backend::{CancelOutcome, DepthRow, JobFilter, ProjectLimits, QueueStats};
use crate::error::{QueueError, Result};
use crate::job::{JobId, JobRecord, JobState, PipelineId};
use crate::pipeline::{PipelineRecord, StepRecord};

use super::completion::stop_pipeline_jobs;
use super::decode::*;
use super::{SqliteQueue, err};

impl SqliteQueue {
    pub(super) async fn cancel_job(&self, id: JobId) -> Result<CancelOutcome> {
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

    pub(super) async fn retry_job(&self, id: JobId) -> Result<()> {
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

    pub(super) async fn read_job(&self, id: JobId) -> Result<Option<JobRecord>> {
        sqlx::query("SELECT * FROM roundhouse_jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .as_ref()
            .map(record)
            .transpose()
    }

    pub(super) async fn list_matching_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
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

    pub(super) async fn read_pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
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

    pub(super) async fn write_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
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
}
