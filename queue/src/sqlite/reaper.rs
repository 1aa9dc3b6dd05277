//! The lease reaper (expired leases acknowledged as failed attempts) and pruning of finished work.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::backend::RescueReport;
use crate::error::Result;
use crate::job::Lease;
use crate::progress::expired_lease_ack;

use super::completion::apply_acks;
use super::decode::*;
use super::{SqliteQueue, err};

impl SqliteQueue {
    pub(super) async fn rescue_expired_leases(&self) -> Result<RescueReport> {
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

    pub(super) async fn prune_finished(&self, before: DateTime<Utc>) -> Result<u64> {
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
}
