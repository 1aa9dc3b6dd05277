//! Claims (under the writer lock: limits, token buckets, the fair split) and heartbeats.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use sqlx::{Row, SqliteConnection};

use crate::backend::{
    Candidate, ClaimRequest, HeartbeatReply, MAX_PROJECTS_PER_CLAIM, ProjectLimits, fair_quotas, refill_tokens, room,
};
use crate::error::Result;
use crate::job::{ClaimedJob, Lease};

use super::completion::apply_acks;
use super::decode::*;
use super::{SqliteQueue, err};

impl SqliteQueue {
    pub(super) async fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
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

    pub(super) async fn renew_leases(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
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
}
