//! The lease reaper (expired leases acknowledged as failed attempts) and pruning of finished work.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::backend::RescueReport;
use crate::error::Result;
use crate::job::Lease;
use crate::progress::expired_lease_ack;

use super::claim::policy;
use super::completion::apply_acks;
use super::{PostgresQueue, err};

impl PostgresQueue {
    pub(super) async fn rescue_expired_leases(&self) -> Result<RescueReport> {
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
        let mut tx = self.pool.begin_with(super::claim::HOT_PATH_BEGIN).await.map_err(err)?;
        let woke = apply_acks(&mut tx, &acks, true).await?;
        tx.commit().await.map_err(err)?;
        self.made_available(woke);
        Ok(report)
    }

    pub(super) async fn prune_finished(&self, before: DateTime<Utc>) -> Result<u64> {
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
}
