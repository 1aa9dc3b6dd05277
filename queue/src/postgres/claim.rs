//! Claims (the project scan, limits, the fair split and the claim statement) and heartbeats.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::backend::{
    Candidate, ClaimRequest, HeartbeatReply, MAX_PROJECTS_PER_CLAIM, ProjectLimits, fair_quotas, refill_tokens, room,
};
use crate::error::Result;
use crate::job::{ClaimedJob, JobPolicy, Lease};

use super::{PostgresQueue, err};

impl PostgresQueue {
    /// Makes due `scheduled` jobs available; at most every 50 ms per process.
    pub(super) async fn promote_due(&self) -> Result<()> {
        let now_ms = Utc::now().timestamp_millis();
        let last = self.last_promotion_ms.load(Ordering::Relaxed);
        if now_ms - last < 50
            || self
                .last_promotion_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        sqlx::query(
            "UPDATE roundhouse_jobs SET state = 'available' WHERE id IN (
                 SELECT id FROM roundhouse_jobs WHERE state = 'scheduled' AND run_at <= now()
                 ORDER BY run_at LIMIT 5000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    pub(super) async fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        self.promote_due().await?;
        let mut tx = self.pool.begin_with(HOT_PATH_BEGIN).await.map_err(err)?;
        let conn: &mut PgConnection = &mut tx;
        // Distinct projects with available work (a loose index scan, one probe per project), and
        // whether any of them has limits.
        let rows = sqlx::query(PROJECTS_WITH_WORK)
            .bind(MAX_PROJECTS_PER_CLAIM as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?;
        let mut projects = Vec::with_capacity(rows.len());
        let mut any_limited = false;
        for row in &rows {
            projects.push(row.try_get::<String, _>("project").map_err(err)?);
            any_limited |= row.try_get::<bool, _>("limited").map_err(err)?;
        }
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        if !any_limited {
            // The common case: one statement; SKIP LOCKED keeps concurrent claims apart.
            let candidates: Vec<Candidate> = projects
                .into_iter()
                .map(|project| Candidate { project, room: None })
                .collect();
            let jobs = take(&mut *conn, &fair_quotas(&candidates, request.limit, rotation), request).await?;
            tx.commit().await.map_err(err)?;
            return Ok(jobs);
        }
        // Lock the limits of these projects first, then count their running jobs in a later
        // statement, whose snapshot sees every claim committed before the lock was granted.
        let limit_rows = sqlx::query(
            "SELECT project, max_running, jobs_per_minute, tokens, refilled_at, now() AS now
             FROM roundhouse_project_limits WHERE project = ANY($1) ORDER BY project FOR UPDATE",
        )
        .bind(&projects)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let mut limited = std::collections::HashMap::new();
        for row in &limit_rows {
            let limits = ProjectLimits {
                max_running: row
                    .try_get::<Option<i32>, _>("max_running")
                    .map_err(err)?
                    .map(|v| v as u32),
                jobs_per_minute: row
                    .try_get::<Option<i32>, _>("jobs_per_minute")
                    .map_err(err)?
                    .map(|v| v as u32),
            };
            let refilled_at: DateTime<Utc> = row.try_get("refilled_at").map_err(err)?;
            // now() is the transaction's start, which may precede the last refill by a claim
            // that held the lock meanwhile: never move the bucket's clock backwards.
            let now = row.try_get::<DateTime<Utc>, _>("now").map_err(err)?.max(refilled_at);
            let tokens = match limits.jobs_per_minute {
                Some(rate) => refill_tokens(row.try_get("tokens").map_err(err)?, refilled_at, now, rate),
                None => 0.0,
            };
            limited.insert(row.try_get::<String, _>("project").map_err(err)?, (limits, tokens, now));
        }
        let mut running = std::collections::HashMap::new();
        let capped: Vec<&String> = limited
            .iter()
            .filter(|(_, (l, _, _))| l.max_running.is_some())
            .map(|(p, _)| p)
            .collect();
        if !capped.is_empty() {
            for row in sqlx::query(
                "SELECT project, count(*) AS n FROM roundhouse_jobs WHERE state = 'running' AND project = ANY($1) GROUP BY project",
            )
            .bind(&capped)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?
            {
                running.insert(
                    row.try_get::<String, _>("project").map_err(err)?,
                    row.try_get::<i64, _>("n").map_err(err)? as u64,
                );
            }
        }
        let candidates: Vec<Candidate> = projects
            .iter()
            .map(|project| Candidate {
                project: project.clone(),
                room: limited
                    .get(project)
                    .and_then(|(limits, tokens, _)| room(limits, running.get(project).copied().unwrap_or(0), *tokens)),
            })
            .collect();
        let jobs = take(&mut *conn, &fair_quotas(&candidates, request.limit, rotation), request).await?;
        // Spend rate-limit tokens for what was claimed.
        let spent: Vec<(String, f64, DateTime<Utc>)> = limited
            .iter()
            .filter(|(_, (l, _, _))| l.jobs_per_minute.is_some())
            .map(|(project, (_, tokens, now))| {
                let used = jobs.iter().filter(|j| &j.project == project).count() as f64;
                (project.clone(), tokens - used, *now)
            })
            .collect();
        if !spent.is_empty() {
            sqlx::query(
                "UPDATE roundhouse_project_limits l SET tokens = s.tokens, refilled_at = s.at
                 FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) AS s(project, tokens, at)
                 WHERE l.project = s.project",
            )
            .bind(spent.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
            .bind(spent.iter().map(|s| s.1).collect::<Vec<_>>())
            .bind(spent.iter().map(|s| s.2).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(jobs)
    }

    pub(super) async fn renew_leases(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        // Rows are locked in id order everywhere, so concurrent batches cannot deadlock.
        let mut sorted = leases.to_vec();
        sorted.sort_unstable_by_key(|l| l.job);
        let mut tx = self.pool.begin_with(HOT_PATH_BEGIN).await.map_err(err)?;
        let rows = sqlx::query(
            "UPDATE roundhouse_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM unnest($1::bigint[], $2::int4[]) AS l(id, token)
             WHERE j.id = l.id AND j.claims = l.token AND j.state = 'running' AND j.worker_id = $4
             RETURNING j.id, j.cancel_requested",
        )
        .bind(sorted.iter().map(|l| l.job).collect::<Vec<_>>())
        .bind(sorted.iter().map(|l| l.token as i32).collect::<Vec<_>>())
        .bind(lease.as_millis() as i64)
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
            if row.try_get::<bool, _>("cancel_requested").map_err(err)? {
                reply.cancel.push(id);
            }
        }
        reply.lost = leases.iter().map(|l| l.job).filter(|id| !held.contains(id)).collect();
        Ok(reply)
    }
}

/// Opens the transaction of a claim or a heartbeat. A claim must walk the partial `available`
/// index in (project, priority, id) order, stopped by `LIMIT`, and both must reach each row they
/// update through the primary key: then they cost the same whether ten or a million jobs wait or
/// are done. The planner cannot know how many rows `LIMIT q.n` yields (it guesses) and, without
/// fresh statistics, how many rows are available; under a deep backlog it then picked plans
/// linear in the table: a hash join that reads the *whole* jobs table to update a batch (74 ms a
/// claim with 200,000 jobs, issue 21; heartbeats that slow let leases lapse and jobs ran twice),
/// or a bitmap scan that sorts every waiting row. Planner settings scoped to the transaction leave
/// only the ordered index walk and nested loops; no other statement is affected. Not for
/// acknowledgements: with hash joins ruled out and statistics that say nothing runs, their
/// planner loops over the `running` index once per acknowledged job (19 s for 4,096 acks).
pub(super) const HOT_PATH_BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_sort = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Distinct projects with available work: a loose index scan over the `available` index.
pub(super) const PROJECTS_WITH_WORK: &str = "WITH RECURSIVE p(project) AS (
         (SELECT project FROM roundhouse_jobs WHERE state = 'available' ORDER BY project LIMIT 1)
         UNION ALL
         SELECT (SELECT j.project FROM roundhouse_jobs j WHERE j.state = 'available' AND j.project > p.project
                 ORDER BY j.project LIMIT 1)
         FROM p WHERE p.project IS NOT NULL)
     SELECT p.project, EXISTS (SELECT 1 FROM roundhouse_project_limits l WHERE l.project = p.project) AS limited
     FROM p WHERE p.project IS NOT NULL LIMIT $1";

/// Leases up to each project's quota of available jobs, by priority then age, in one statement.
pub(super) async fn take<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    quotas: &[(String, u32)],
    request: &ClaimRequest,
) -> Result<Vec<ClaimedJob>> {
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(take_sql()))
        .bind(quotas.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
        .bind(quotas.iter().map(|(_, n)| *n as i32).collect::<Vec<_>>())
        .bind(&request.kinds)
        .bind(&request.worker)
        .bind(request.lease.as_millis() as i64)
        .fetch_all(conn)
        .await
        .map_err(err)?;
    rows.iter().map(claimed).collect()
}

/// The claim statement: $1 projects, $2 their quotas, $3 kinds, $4 worker, $5 lease in ms.
pub(super) fn take_sql() -> String {
    format!(
        "WITH quota AS (SELECT * FROM unnest($1::text[], $2::int4[]) AS q(project, n)),
              picked AS (
                  SELECT c.id FROM quota q CROSS JOIN LATERAL (
                      SELECT id FROM roundhouse_jobs
                      WHERE state = 'available' AND project = q.project AND kind = ANY($3)
                      ORDER BY priority, id LIMIT q.n FOR UPDATE SKIP LOCKED) c)
         UPDATE roundhouse_jobs j SET state = 'running', attempt = j.attempt + 1, claims = j.claims + 1, worker_id = $4,
             attempted_at = now(), lease_expires_at = now() + $5 * interval '1 millisecond'
         FROM picked WHERE j.id = picked.id
         RETURNING {CLAIMED_COLUMNS}"
    )
}

pub(super) fn claimed(row: &PgRow) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload: row.try_get("payload").map_err(err)?,
        attempt: row.try_get::<i32, _>("attempt").map_err(err)? as u32,
        lease_token: row.try_get::<i32, _>("claims").map_err(err)? as u32,
        policy: policy(row)?,
        created_at: row.try_get("created_at").map_err(err)?,
        run_at: row.try_get("run_at").map_err(err)?,
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
    })
}

pub(super) fn policy(row: &PgRow) -> Result<JobPolicy> {
    Ok(JobPolicy::from_stored(
        row.try_get::<i16, _>("priority").map_err(err)? as i64,
        row.try_get::<i32, _>("max_attempts").map_err(err)? as i64,
        row.try_get("timeout_ms").map_err(err)?,
        row.try_get("backoff_base_ms").map_err(err)?,
        row.try_get("backoff_max_ms").map_err(err)?,
    ))
}

pub(super) const CLAIMED_COLUMNS: &str =
    "j.id, j.kind, j.project, j.payload, j.attempt, j.claims, j.priority, j.max_attempts, j.timeout_ms,
    j.backoff_base_ms, j.backoff_max_ms, j.created_at, j.run_at, j.pipeline_id, j.step";
