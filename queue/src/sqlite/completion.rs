//! Acknowledgements: each batch, with the pipeline effects of its acks, in one write transaction.

use chrono::Utc;
use sqlx::{Row, SqliteConnection};

use crate::error::Result;
use crate::job::Ack;
use crate::progress::{AckedRow, Progress};

use super::decode::*;
use super::{SqliteQueue, err};

impl SqliteQueue {
    pub(super) async fn acknowledge_batch(&self, acks: Vec<Ack>) -> Result<()> {
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
}

pub(super) async fn stop_pipeline_jobs(
    conn: &mut SqliteConnection,
    pipeline: i64,
    reason: &str,
    now: i64,
) -> Result<()> {
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
pub(super) async fn apply_acks(conn: &mut SqliteConnection, acks: &[Ack], expired_only: bool) -> Result<bool> {
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
