//! Enqueueing: bulk inserts of jobs (also inside a caller's transaction) and pipelines with their
//! supersede and unique keys.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use crate::error::{QueueError, Result};
use crate::job::{Enqueued, NewJob};
use crate::pipeline::{NewPipeline, PipelineEnqueued};

use super::completion::stop_pipeline_jobs;
use super::cursor::{Notice, Position};
use super::{CHANNEL, INSERT_CHUNK, PostgresQueue, err, step_key_taken};

impl PostgresQueue {
    /// Enqueues inside the caller's transaction: the jobs commit with the caller's rows or not at all.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            out.extend(insert_jobs(conn, chunk).await?);
        }
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

    pub(super) async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.len() <= INSERT_CHUNK {
            // One autocommit statement inserts the jobs and wakes the workers.
            for job in &jobs {
                job.validate()?;
            }
            let mut conn = self.pool.acquire().await.map_err(err)?;
            let out = insert_jobs(&mut conn, &jobs).await?;
            self.enqueued_here(jobs.iter().map(|j| (j.project.as_str(), j.policy.priority)), &out);
            return Ok(out);
        }
        let places: Vec<(String, i16)> = jobs.iter().map(|j| (j.project.clone(), j.policy.priority)).collect();
        let mut tx = self.pool.begin().await.map_err(err)?;
        let out = self.enqueue_in(&mut tx, jobs).await?;
        tx.commit().await.map_err(err)?;
        self.enqueued_here(places.iter().map(|(p, priority)| (p.as_str(), *priority)), &out);
        Ok(out)
    }

    /// After this process committed an enqueue: its own claim cursors move as the enqueue's
    /// notifications will say (a claim right after the enqueue sees an urgent job first).
    fn enqueued_here<'a>(&self, jobs: impl Iterator<Item = (&'a str, i16)>, out: &[Enqueued]) {
        let mut first: HashMap<&str, Position> = HashMap::new();
        for ((project, priority), enqueued) in jobs.zip(out).filter(|(_, e)| !e.duplicate) {
            let at = Position {
                priority,
                id: enqueued.id,
            };
            first.entry(project).and_modify(|p| *p = (*p).min(at)).or_insert(at);
        }
        for (project, at) in first {
            self.cursors.notice(Notice::Rewind {
                project: project.to_string(),
                first: at,
            });
        }
    }
}

/// The bulk INSERT of one chunk of jobs, from arrays (one row per job).
pub(super) const INSERT_JOBS: &str =
    "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
             backoff_base_ms, backoff_max_ms, run_at, unique_key)
         SELECT kind, project, payload, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
             priority, max_attempts, timeout_ms, base_ms, max_ms, coalesce(run_at, now()), unique_key
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int2[], $5::int4[], $6::int8[], $7::int8[], $8::int8[],
                     $9::timestamptz[], $10::text[])
              AS t(kind, project, payload, priority, max_attempts, timeout_ms, base_ms, max_ms, run_at, unique_key)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
         RETURNING id, unique_key, project, priority, state";

/// Inserts one chunk of jobs with a single statement; resolves unique-key conflicts to the
/// existing job. The same statement wakes workers (one round trip in autocommit) with, per
/// project, the place of its first new available row in the claim order (`priority \t id \t
/// project`, see [`super::cursor`]); notifications are delivered when the transaction commits.
pub(super) async fn insert_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    let sql = format!(
        "WITH ins AS ({INSERT_JOBS}),
              first AS (SELECT DISTINCT ON (project) project, priority, id FROM ins WHERE state = 'available'
                        ORDER BY project, priority, id),
              woke AS (SELECT count(pg_notify('{CHANNEL}', priority || E'\\t' || id || E'\\t' || project)) FROM first)
         SELECT ins.id, ins.unique_key FROM ins, woke"
    );
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

/// Cancels the unstarted jobs of the given pipelines and asks workers to stop their running ones.
/// Marks the running pipelines with `key` superseded and stops their jobs (queued ones are
/// cancelled, running ones asked to stop); returns the superseded runs. The jobs are stopped by a
/// statement of its own (not a CTE of this one, whose snapshot a concurrent claim could slip past).
pub(super) async fn supersede(conn: &mut PgConnection, key: &str) -> Result<Vec<i64>> {
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
