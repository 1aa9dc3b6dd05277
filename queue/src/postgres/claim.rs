//! Claims (the project scan, limits, the fair split and the claim statement) and heartbeats.

use std::collections::HashMap;
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

use super::cursor::{ClaimCursors, Notice, Position};
use super::{CHANNEL, PostgresQueue, err};

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
        // Promoted rows keep their ids, behind claim cursors: every process walks in full next.
        let promoted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH promoted AS (
                 UPDATE roundhouse_jobs SET state = 'available' WHERE id IN (
                     SELECT id FROM roundhouse_jobs WHERE state = 'scheduled' AND run_at <= now()
                     ORDER BY run_at LIMIT 5000 FOR UPDATE SKIP LOCKED)
                 RETURNING 1),
             n AS (SELECT count(*) AS n FROM promoted)
             SELECT n.n FROM n LEFT JOIN LATERAL (SELECT pg_notify('{CHANNEL}', '') WHERE n.n > 0) w ON true"
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        if promoted > 0 {
            self.cursors.notice(Notice::Reset);
        }
        Ok(())
    }

    pub(super) async fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        self.promote_due().await?;
        let kinds = ClaimCursors::kinds_key(&request.kinds);
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        // Successive claims from cursors look at successive windows of the known projects, each
        // served from its first; a full walk's scan moves on by itself, and its claims take turns
        // within it.
        let plan = self
            .cursors
            .plan(&kinds, turn.wrapping_mul(request.limit), MAX_PROJECTS_PER_CLAIM);
        let rotation = if plan.from.is_some() { 0 } else { turn };
        let mut tx = self.pool.begin_with(HOT_PATH_BEGIN).await.map_err(err)?;
        let conn: &mut PgConnection = &mut tx;
        // Projects with available work, and whether any of them has limits: a loose index scan
        // (a full walk), or one probe after each known project's cursor.
        let rows = match &plan.from {
            None => self.projects_with_work(&mut *conn).await?,
            Some(from) => {
                let (projects, after): (Vec<&str>, Vec<Position>) =
                    from.iter().map(|(p, at)| (p.as_str(), *at)).unzip();
                sqlx::query(PROJECTS_AFTER_CURSORS)
                    .bind(projects)
                    .bind(after.iter().map(|a| a.priority).collect::<Vec<_>>())
                    .bind(after.iter().map(|a| a.id).collect::<Vec<_>>())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(err)?
            }
        };
        let mut projects = Vec::with_capacity(rows.len());
        let mut any_limited = false;
        for row in &rows {
            projects.push(row.try_get::<String, _>("project").map_err(err)?);
            any_limited |= row.try_get::<bool, _>("limited").map_err(err)?;
        }
        let starts = |quotas: Vec<(String, u32)>| -> Vec<Quota> {
            quotas
                .into_iter()
                .map(|(project, n)| {
                    let after = plan
                        .from
                        .as_ref()
                        .and_then(|from| from.iter().find(|(p, _)| *p == project))
                        .map_or(Position::START, |(_, at)| *at);
                    Quota { project, n, after }
                })
                .collect()
        };
        if !any_limited {
            // The common case: one statement; SKIP LOCKED keeps concurrent claims apart.
            let candidates: Vec<Candidate> = projects
                .iter()
                .map(|project| Candidate {
                    project: project.clone(),
                    room: None,
                })
                .collect();
            let jobs = take(
                &mut *conn,
                &starts(fair_quotas(&candidates, request.limit, rotation)),
                request,
            )
            .await?;
            tx.commit().await.map_err(err)?;
            self.cursors.record(&kinds, &plan, &projects, &last_taken(&jobs));
            return Ok(jobs.into_iter().map(|t| t.job).collect());
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
        let jobs = take(
            &mut *conn,
            &starts(fair_quotas(&candidates, request.limit, rotation)),
            request,
        )
        .await?;
        // Spend rate-limit tokens for what was claimed.
        let spent: Vec<(String, f64, DateTime<Utc>)> = limited
            .iter()
            .filter(|(_, (l, _, _))| l.jobs_per_minute.is_some())
            .map(|(project, (_, tokens, now))| {
                let used = jobs.iter().filter(|t| &t.job.project == project).count() as f64;
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
        self.cursors.record(&kinds, &plan, &projects, &last_taken(&jobs));
        Ok(jobs.into_iter().map(|t| t.job).collect())
    }

    /// Up to [`MAX_PROJECTS_PER_CLAIM`] projects with available work, in name order from where the
    /// previous full walk stopped (wrapping round), so that with more projects than that every one
    /// gets its turn; the front of the order alone would starve the rest for as long as it has work.
    async fn projects_with_work(&self, conn: &mut PgConnection) -> Result<Vec<PgRow>> {
        let start = self.walk_from.lock().expect("walk start poisoned").clone();
        let mut rows = sqlx::query(PROJECTS_WITH_WORK)
            .bind(MAX_PROJECTS_PER_CLAIM as i64)
            .bind(&start)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?;
        if rows.len() < MAX_PROJECTS_PER_CLAIM && !start.is_empty() {
            let wrapped = sqlx::query(PROJECTS_WITH_WORK)
                .bind((MAX_PROJECTS_PER_CLAIM - rows.len()) as i64)
                .bind("")
                .fetch_all(&mut *conn)
                .await
                .map_err(err)?;
            for row in wrapped {
                if row.try_get::<String, _>("project").map_err(err)? > start {
                    break;
                }
                rows.push(row);
            }
        }
        let next = match rows.last() {
            Some(last) if rows.len() == MAX_PROJECTS_PER_CLAIM => last.try_get::<String, _>("project").map_err(err)?,
            _ => String::new(),
        };
        *self.walk_from.lock().expect("walk start poisoned") = next;
        Ok(rows)
    }

    pub(super) async fn renew_leases(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        // Rows are locked in id order everywhere, so concurrent batches cannot deadlock.
        let mut sorted = leases.to_vec();
        sorted.sort_unstable_by_key(|l| l.job);
        let mut tx = self.pool.begin_with(HOT_PATH_BEGIN).await.map_err(err)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(heartbeat_sql()))
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

/// Opens the transaction of a claim, a heartbeat or an acknowledgement. A claim must walk the partial `available`
/// index in (project, priority, id) order, stopped by `LIMIT`, and both must reach each row they
/// update through the primary key: then they cost the same whether ten or a million jobs wait or
/// are done. The planner cannot know how many rows `LIMIT q.n` yields (it guesses) and, without
/// fresh statistics, how many rows are available; under a deep backlog it then picked plans
/// linear in the table: a hash join that reads the *whole* jobs table to update a batch (74 ms a
/// claim with 200,000 jobs, issue 21; heartbeats that slow let leases lapse and jobs ran twice),
/// or a bitmap scan that sorts every waiting row. Planner settings scoped to the transaction leave
/// only the ordered index walk and nested loops; no other statement is affected. Heartbeats and
/// acknowledgements also need [`STILL_RUNNING`]: with hash joins ruled out and statistics that
/// say nothing runs, their planner otherwise looped over a `running` partial index once per row.
pub(super) const HOT_PATH_BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_sort = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// The condition that a leased row (reached by its primary key) is still running, written so that
/// the planner cannot prove the `running` partial indexes' predicate from it and so cannot walk
/// them: their fronts fill with the dead entries of every job finished since the last VACUUM, and
/// with statistics saying few jobs run (gathered while they all waited) a heartbeat or an
/// acknowledgement preferred a nested loop over a whole partial index to one probe of the primary
/// key per row — 23–35 s a heartbeat in a million-job drain, leases lapsed, jobs ran twice
/// (issue 21). Tested: `heartbeats_and_acknowledgements_reach_rows_by_their_primary_key`.
pub(super) const STILL_RUNNING: &str = "(j.state = 'running') IS TRUE";

/// Distinct projects with available work after project $2 (`''`: from the first), at most $1: a
/// loose index scan over the `available` index.
pub(super) const PROJECTS_WITH_WORK: &str = "WITH RECURSIVE p(project) AS (
         (SELECT project FROM roundhouse_jobs WHERE state = 'available' AND project > $2 ORDER BY project LIMIT 1)
         UNION ALL
         SELECT (SELECT j.project FROM roundhouse_jobs j WHERE j.state = 'available' AND j.project > p.project
                 ORDER BY j.project LIMIT 1)
         FROM p WHERE p.project IS NOT NULL)
     SELECT p.project, EXISTS (SELECT 1 FROM roundhouse_project_limits l WHERE l.project = p.project) AS limited
     FROM p WHERE p.project IS NOT NULL LIMIT $1";

/// Distinct projects with available work after each known project's cursor: $1 projects, $2
/// and $3 their cursors' (priority, id). One index descent per project, past its dead front.
pub(super) const PROJECTS_AFTER_CURSORS: &str = "SELECT c.project,
         EXISTS (SELECT 1 FROM roundhouse_project_limits l WHERE l.project = c.project) AS limited
     FROM unnest($1::text[], $2::int2[], $3::int8[]) AS c(project, priority, id)
     WHERE EXISTS (SELECT 1 FROM roundhouse_jobs j
                   WHERE j.state = 'available' AND j.project = c.project AND (j.priority, j.id) > (c.priority, c.id))";

/// A project's share of a claim, and where its walk starts.
pub(super) struct Quota {
    pub project: String,
    pub n: u32,
    pub after: Position,
}

/// A claimed job and its place in the `available` index (for the claim cursor).
pub(super) struct Taken {
    pub job: ClaimedJob,
    pub at: Position,
}

/// The last position taken in each project.
fn last_taken(jobs: &[Taken]) -> HashMap<String, Position> {
    let mut last: HashMap<String, Position> = HashMap::new();
    for t in jobs {
        let at = last.entry(t.job.project.clone()).or_insert(t.at);
        *at = (*at).max(t.at);
    }
    last
}

/// Leases up to each project's quota of available jobs after its start, by priority then age,
/// in one statement.
pub(super) async fn take<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    quotas: &[Quota],
    request: &ClaimRequest,
) -> Result<Vec<Taken>> {
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(take_sql()))
        .bind(quotas.iter().map(|q| q.project.as_str()).collect::<Vec<_>>())
        .bind(quotas.iter().map(|q| q.n as i32).collect::<Vec<_>>())
        .bind(&request.kinds)
        .bind(&request.worker)
        .bind(request.lease.as_millis() as i64)
        .bind(quotas.iter().map(|q| q.after.priority).collect::<Vec<_>>())
        .bind(quotas.iter().map(|q| q.after.id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            let job = claimed(row)?;
            let at = Position {
                priority: row.try_get("priority").map_err(err)?,
                id: job.id,
            };
            Ok(Taken { job, at })
        })
        .collect()
}

/// The heartbeat: $1 job ids, $2 their lease tokens, $3 the lease in ms, $4 the worker.
pub(super) fn heartbeat_sql() -> String {
    format!(
        "UPDATE roundhouse_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
         FROM unnest($1::bigint[], $2::int4[]) AS l(id, token)
         WHERE j.id = l.id AND j.claims = l.token AND {STILL_RUNNING} AND j.worker_id = $4
         RETURNING j.id, j.cancel_requested"
    )
}

/// The claim statement: $1 projects, $2 their quotas, $3 kinds, $4 worker, $5 lease in ms, $6
/// and $7 the (priority, id) each project's walk starts after.
pub(super) fn take_sql() -> String {
    format!(
        "WITH quota AS (SELECT * FROM unnest($1::text[], $2::int4[], $6::int2[], $7::int8[])
                        AS q(project, n, after_priority, after_id)),
              picked AS (
                  SELECT c.id FROM quota q CROSS JOIN LATERAL (
                      SELECT id FROM roundhouse_jobs
                      WHERE state = 'available' AND project = q.project AND kind = ANY($3)
                        AND (priority, id) > (q.after_priority, q.after_id)
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
