//! Acknowledgements: one statement per batch, with the pipeline effects of its acks.

use sqlx::{PgConnection, Row};

use crate::error::Result;
use crate::job::Ack;
use crate::progress::{AckedRow, Progress};

use super::claim::STILL_RUNNING;
use super::{err, notify_workers};

/// Stops a run's jobs in one statement: queued ones are cancelled, running ones asked to stop. A
/// step being claimed meanwhile is waited for and re-checked on its new version (READ COMMITTED),
/// so it gets the cancel request as `running`.
pub(super) async fn stop_pipeline_jobs(conn: &mut PgConnection, pipeline: i64, reason: &str) -> Result<()> {
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
/// lease has run out are touched (the reaper's path, racing live heartbeats safely). Returns
/// whether jobs became available or scheduled (workers were notified; claim cursors must reset).
pub(super) async fn apply_acks(conn: &mut PgConnection, acks: &[Ack], expired_only: bool) -> Result<bool> {
    if acks.is_empty() {
        return Ok(false);
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
    let sql = ack_sql();
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
    Ok(wake)
}

/// The acknowledgement of a batch: $1 job ids, $2 lease tokens, $3 outcome states, $4 retry
/// times, $5 errors, $6 only if the lease has expired (the reaper).
pub(super) fn ack_sql() -> String {
    format!(
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
         WHERE j.id = a.id AND j.claims = a.token AND {STILL_RUNNING}
           AND (NOT $6 OR j.lease_expires_at < now())
         RETURNING j.pipeline_id, j.state, j.dependents, j.step"
    )
}

/// The state an acked job ends in: a requested cancellation overrides a retry or a hand-back.
pub(super) const EFFECTIVE: &str =
    "(CASE WHEN j.cancel_requested AND a.state IN ('scheduled', 'available') THEN 'cancelled' ELSE a.state END)";
