//! Enqueueing jobs and pipelines, also inside a caller's write transaction.

use chrono::Utc;
use sqlx::SqliteConnection;

use crate::error::Result;
use crate::job::{Enqueued, JobState, NewJob};
use crate::pipeline::{NewPipeline, PipelineEnqueued};

use super::completion::stop_pipeline_jobs;
use super::decode::*;
use super::{SqliteQueue, err};

impl SqliteQueue {
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
