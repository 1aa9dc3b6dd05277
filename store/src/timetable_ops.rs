// Timetable (cron and one-off job runs, the scheduler's leader lease) and Waybill (cost samples,
// budgets, paused environments) operations. Like `ops.rs`, written once and compiled twice — as
// `pg::tt` and `lite::tt`, children of the modules that include `ops.rs` — so the teardown of an
// expired preview goes through the same enqueue-and-supersede path as a closed pull request's
// (`Jobs::pipeline`, `mark_superseded`).

use std::collections::HashMap;

use enclii_domain::pipeline::preview_teardown;
use enclii_queue::{NewJob, PipelineEnqueued};
use serde_json::json;

use super::{Conn, Jobs, audit, change, get_environment, mark_superseded, require_project, require_service};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::timetable::*;

// --- leader lease -------------------------------------------------------------------------------

/// Takes the lease `name` for `holder` if it is free or expired, or renews it if `holder` has it:
/// one upsert, so two contenders cannot both win.
pub async fn try_lead(conn: &mut Conn, name: &str, holder: &str, ttl_ms: i64, now: i64) -> Result<bool> {
    let won = sqlx::query_scalar::<_, String>(
        "INSERT INTO leader_leases (name, holder, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
         WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $4
         RETURNING holder",
    )
    .bind(name)
    .bind(holder)
    .bind(now + ttl_ms)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(won.is_some())
}

pub async fn resign(conn: &mut Conn, name: &str, holder: &str) -> Result<()> {
    sqlx::query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// --- cron schedules -----------------------------------------------------------------------------

/// The `(name, schedule)` of each job of a stored spec.
fn spec_jobs(spec: &serde_json::Value) -> Vec<(String, String)> {
    spec.pointer("/spec/jobs")
        .and_then(|jobs| jobs.as_array())
        .map(|jobs| {
            jobs.iter()
                .filter_map(|job| {
                    let name = job.get("name")?.as_str()?;
                    let schedule = job.get("schedule")?.as_str()?;
                    Some((name.to_string(), schedule.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A fingerprint of the services table that changes whenever a service is created, updated or
/// deleted, so the scheduler re-syncs schedules only when a spec may have changed.
pub async fn services_fingerprint(conn: &mut Conn) -> Result<(i64, i64)> {
    let (count, latest) = sqlx::query_as::<_, (i64, Option<i64>)>("SELECT COUNT(*), MAX(updated_at) FROM services")
        .fetch_one(&mut *conn)
        .await?;
    Ok((count, latest.unwrap_or(0)))
}

/// Brings `cron_schedules` in step with the specs: adds new jobs, re-times jobs whose schedule
/// changed (from `now`), removes jobs no spec has any more.
pub async fn sync_cron(conn: &mut Conn, now: i64) -> Result<CronSync> {
    let services = sqlx::query_as::<_, Service>("SELECT * FROM services")
        .fetch_all(&mut *conn)
        .await?;
    let rows = sqlx::query_as::<_, CronSchedule>("SELECT * FROM cron_schedules")
        .fetch_all(&mut *conn)
        .await?;
    let mut existing: HashMap<(String, String, String), CronSchedule> = rows
        .into_iter()
        .map(|row| ((row.project.clone(), row.service.clone(), row.job.clone()), row))
        .collect();
    let mut sync = CronSync::default();
    for service in &services {
        for (job, schedule) in spec_jobs(&service.spec_json()) {
            let key = (service.project.clone(), service.name.clone(), job.clone());
            let unchanged = existing.remove(&key).map(|row| row.schedule == schedule);
            if unchanged == Some(true) {
                continue;
            }
            let Some(next_at) = next_fire(&schedule, now) else {
                tracing::warn!(project = %service.project, service = %service.name, %job, %schedule,
                    "cron schedule never fires; not scheduled");
                continue;
            };
            sqlx::query(
                "INSERT INTO cron_schedules (project, service, job, schedule, next_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project, service, job) DO UPDATE SET schedule = $4, next_at = $5",
            )
            .bind(&service.project)
            .bind(&service.name)
            .bind(&job)
            .bind(&schedule)
            .bind(next_at)
            .execute(&mut *conn)
            .await?;
            if unchanged.is_some() {
                sync.changed += 1;
            } else {
                sync.added += 1;
            }
        }
    }
    for (project, service, job) in existing.into_keys() {
        sqlx::query("DELETE FROM cron_schedules WHERE project = $1 AND service = $2 AND job = $3")
            .bind(&project)
            .bind(&service)
            .bind(&job)
            .execute(&mut *conn)
            .await?;
        sync.removed += 1;
    }
    Ok(sync)
}

pub async fn cron_schedules(conn: &mut Conn, project: &str) -> Result<Vec<CronSchedule>> {
    require_project(conn, project).await?;
    Ok(
        sqlx::query_as::<_, CronSchedule>("SELECT * FROM cron_schedules WHERE project = $1 ORDER BY service, job")
            .bind(project)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn due_cron(conn: &mut Conn, now: i64, limit: i64) -> Result<Vec<DueCron>> {
    Ok(sqlx::query_as::<_, DueCron>(
        "SELECT c.project, c.service, c.job, c.schedule, c.next_at, s.environment, e.paused_at
         FROM cron_schedules c
         JOIN services s ON s.project = c.project AND s.name = c.service
         LEFT JOIN environments e ON e.project = s.project AND e.name = s.environment
         WHERE c.next_at <= $1 ORDER BY c.next_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// How long a run may stay `queued` or `running` before a cron fire treats it as lost: every
/// attempt timing out, with the longest backoff between attempts, and an hour to spare.
fn lost_after_ms() -> i64 {
    use enclii_queue::JobKind;
    let policy = enclii_domain::jobs::JobRun::policy();
    let attempts = i64::from(policy.max_attempts.max(1));
    let timeout = policy.timeout.as_millis() as i64;
    attempts * (timeout + 600_000) + 3_600_000
}

/// Fires one due cron job, if it is still due as read (`next_at` unchanged: no other scheduler
/// fired it meanwhile). Missed fires are not replayed: the next fire is the first after `now`.
pub async fn fire_cron(conn: &mut Conn, jobs: &Jobs<'_>, due: &DueCron, now: i64) -> Result<Option<CronFire>> {
    let next_at = next_fire(&due.schedule, now).unwrap_or(i64::MAX);
    let claimed = sqlx::query(
        "UPDATE cron_schedules SET next_at = $4 WHERE project = $1 AND service = $2 AND job = $3 AND next_at = $5",
    )
    .bind(&due.project)
    .bind(&due.service)
    .bind(&due.job)
    .bind(next_at)
    .bind(due.next_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(None);
    }
    let fire = |outcome, run| CronFire {
        project: due.project.clone(),
        service: due.service.clone(),
        job: due.job.clone(),
        outcome,
        run,
    };
    if due.paused_at.is_some() {
        return Ok(Some(fire(CronOutcome::Paused, None)));
    }
    let active = sqlx::query_as::<_, JobRunRecord>(
        "SELECT * FROM job_runs WHERE project = $1 AND service = $2 AND job = $3 AND status IN ('queued', 'running')
         ORDER BY id DESC",
    )
    .bind(&due.project)
    .bind(&due.service)
    .bind(&due.job)
    .fetch_all(&mut *conn)
    .await?;
    let mut still_running = None;
    for run in active {
        if now - run.created_at > lost_after_ms() {
            // Its worker never reported an end (the handler must finish a run on its last attempt).
            finish_run(
                conn,
                run.id,
                job_run_status::FAILED,
                None,
                Some("lost: no worker reported how this run ended"),
                now,
            )
            .await?;
        } else if still_running.is_none() {
            still_running = Some(run);
        }
    }
    let new = NewRun {
        project: &due.project,
        service: &due.service,
        environment: &due.environment,
        job: &due.job,
        trigger: "cron",
        scheduled_for: due.next_at,
        created_by: "scheduler",
    };
    if let Some(previous) = still_running {
        let detail = format!(
            "skipped: the previous run ({}) is still {}; cron runs of one job never overlap",
            previous.id, previous.status
        );
        let run = insert_run(conn, &new, job_run_status::SKIPPED, Some(&detail), now).await?;
        return Ok(Some(fire(CronOutcome::Skipped, Some(run))));
    }
    let run = enqueue_run(conn, jobs, &new, now).await?;
    Ok(Some(fire(CronOutcome::Queued, Some(run))))
}

struct NewRun<'a> {
    project: &'a str,
    service: &'a str,
    environment: &'a str,
    job: &'a str,
    trigger: &'a str,
    scheduled_for: i64,
    created_by: &'a str,
}

async fn insert_run(
    conn: &mut Conn,
    new: &NewRun<'_>,
    status: &str,
    detail: Option<&str>,
    now: i64,
) -> Result<JobRunRecord> {
    let finished_at = (status == job_run_status::SKIPPED).then_some(now);
    Ok(sqlx::query_as::<_, JobRunRecord>(
        "INSERT INTO job_runs (project, service, environment, job, trigger, status, attempts, detail, scheduled_for,
                               created_at, finished_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11) RETURNING *",
    )
    .bind(new.project)
    .bind(new.service)
    .bind(new.environment)
    .bind(new.job)
    .bind(new.trigger)
    .bind(status)
    .bind(detail)
    .bind(new.scheduled_for)
    .bind(now)
    .bind(finished_at)
    .bind(new.created_by)
    .fetch_one(&mut *conn)
    .await?)
}

/// A `queued` run and its `job-run` job (the kind's retry policy; a key unique to the run, so the
/// queue never holds two jobs for one run).
async fn enqueue_run(conn: &mut Conn, jobs: &Jobs<'_>, new: &NewRun<'_>, now: i64) -> Result<JobRunRecord> {
    let run = insert_run(conn, new, job_run_status::QUEUED, None, now).await?;
    let payload = enclii_domain::jobs::JobRun {
        service: new.service.to_string(),
        environment: new.environment.to_string(),
        job: new.job.to_string(),
        run: run.id,
    };
    let job = NewJob::typed(new.project, &payload)?.unique_key(format!(
        "job-run:{}/{}/{}:{}@{}",
        new.project, new.service, new.job, run.id, run.created_at
    ));
    let job_id = jobs.job(conn, job).await?;
    Ok(
        sqlx::query_as::<_, JobRunRecord>("UPDATE job_runs SET queue_job_id = $2 WHERE id = $1 RETURNING *")
            .bind(run.id)
            .bind(job_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Runs a job of a service's spec now (`manual`), in the service's environment. Unlike cron runs,
/// a manual run does not wait for a run still in progress: someone asked for it.
pub async fn run_job_now(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
    actor: &str,
    project: &str,
    service: &str,
    job: &str,
    now: i64,
) -> Result<JobRunRecord> {
    let found = require_service(conn, project, service).await?;
    let names: Vec<String> = spec_jobs(&found.spec_json())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    if !names.iter().any(|name| name == job) {
        let has = if names.is_empty() {
            "it has no jobs; add one under spec.jobs of its Service Spec".to_string()
        } else {
            format!("its jobs are: {}", names.join(", "))
        };
        return Err(StoreError::NotFound(format!(
            "service `{service}` of project `{project}` has no job `{job}`; {has}"
        )));
    }
    let environment = get_environment(conn, project, &found.environment).await?;
    refuse_paused(&environment, "run its jobs")?;
    let new = NewRun {
        project,
        service,
        environment: &found.environment,
        job,
        trigger: "manual",
        scheduled_for: now,
        created_by: actor,
    };
    let run = enqueue_run(conn, jobs, &new, now).await?;
    let diff = json!({"service": service, "environment": found.environment, "job": job, "queue_job": run.queue_job_id});
    let entity = run.id.to_string();
    audit(conn, actor, change("job.run", "job_run", &entity, Some(project), diff)).await?;
    Ok(run)
}

fn refuse_paused(environment: &Environment, what: &str) -> Result<()> {
    match environment.paused_at {
        None => Ok(()),
        Some(at) => Err(StoreError::Conflict(format!(
            "environment `{}` of project `{}` is paused (since {}), so it cannot {what}; resume it with \
             POST /v1/projects/{}/environments/{}/resume",
            environment.name,
            environment.project,
            rfc3339(at),
            environment.project,
            environment.name
        ))),
    }
}

pub async fn job_run(conn: &mut Conn, id: i64) -> Result<JobRunRecord> {
    sqlx::query_as::<_, JobRunRecord>("SELECT * FROM job_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job run {id} does not exist")))
}

/// An attempt of a run started. A retried attempt reopens a run a failed attempt ended.
pub async fn job_run_started(conn: &mut Conn, id: i64, attempt: i32, now: i64) -> Result<JobRunRecord> {
    let run = job_run(conn, id).await?;
    sqlx::query_as::<_, JobRunRecord>(
        "UPDATE job_runs SET status = 'running', attempts = $2, started_at = COALESCE(started_at, $3),
             finished_at = NULL, exit_code = NULL, detail = NULL
         WHERE id = $1 AND status IN ('queued', 'running', 'failed') RETURNING *",
    )
    .bind(id)
    .bind(attempt)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::Conflict(format!(
            "job run {id} is {}; only a queued, running or failed run can start an attempt",
            run.status
        ))
    })
}

async fn finish_run(
    conn: &mut Conn,
    id: i64,
    status: &str,
    exit_code: Option<i64>,
    detail: Option<&str>,
    now: i64,
) -> Result<Option<JobRunRecord>> {
    Ok(sqlx::query_as::<_, JobRunRecord>(
        "UPDATE job_runs SET status = $2, exit_code = $3, detail = $4, finished_at = $5
         WHERE id = $1 AND status IN ('queued', 'running') RETURNING *",
    )
    .bind(id)
    .bind(status)
    .bind(exit_code)
    .bind(detail)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Ends a run. Ending a run that already ended changes nothing and returns it as it is (a worker
/// may report twice).
pub async fn job_run_finished(
    conn: &mut Conn,
    id: i64,
    status: &str,
    exit_code: Option<i64>,
    detail: Option<&str>,
    now: i64,
) -> Result<JobRunRecord> {
    if !job_run_status::FINAL.contains(&status) || status == job_run_status::SKIPPED {
        return Err(StoreError::Invalid(format!(
            "`{status}` is not how a run ends; use `succeeded`, `failed` or `cancelled`"
        )));
    }
    match finish_run(conn, id, status, exit_code, detail, now).await? {
        Some(run) => Ok(run),
        None => job_run(conn, id).await,
    }
}

pub async fn list_job_runs(
    conn: &mut Conn,
    project: &str,
    service: &str,
    job: Option<&str>,
    limit: i64,
) -> Result<Vec<JobRunRecord>> {
    require_service(conn, project, service).await?;
    Ok(sqlx::query_as::<_, JobRunRecord>(
        "SELECT * FROM job_runs WHERE project = $1 AND service = $2 AND ($3 IS NULL OR job = $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(project)
    .bind(service)
    .bind(job)
    .bind(limit.clamp(1, 500))
    .fetch_all(&mut *conn)
    .await?)
}

// --- cost ---------------------------------------------------------------------------------------

pub async fn insert_cost_sample(conn: &mut Conn, s: &NewCostSample) -> Result<CostSampleRecord> {
    Ok(sqlx::query_as::<_, CostSampleRecord>(
        "INSERT INTO cost_samples (project, environment, service, at, interval_secs, cpu_seconds, ram_gib_hours,
                                   volume_gib_hours, egress_gib, cost_cents, cpu_counter_ns, egress_counter_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
    )
    .bind(&s.project)
    .bind(&s.environment)
    .bind(&s.service)
    .bind(s.at)
    .bind(s.interval_secs)
    .bind(s.cpu_seconds)
    .bind(s.ram_gib_hours)
    .bind(s.volume_gib_hours)
    .bind(s.egress_gib)
    .bind(s.cost_cents)
    .bind(s.cpu_counter_ns)
    .bind(s.egress_counter_bytes)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn last_cost_sample(
    conn: &mut Conn,
    project: &str,
    environment: &str,
    service: &str,
) -> Result<Option<CostSampleRecord>> {
    Ok(sqlx::query_as::<_, CostSampleRecord>(
        "SELECT * FROM cost_samples WHERE project = $1 AND environment = $2 AND service = $3
         ORDER BY at DESC, id DESC LIMIT 1",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn cost_report(conn: &mut Conn, project: &str, since: i64) -> Result<Vec<CostLine>> {
    require_project(conn, project).await?;
    Ok(sqlx::query_as::<_, CostLine>(
        "SELECT environment, service, SUM(cpu_seconds) AS cpu_seconds, SUM(ram_gib_hours) AS ram_gib_hours,
                SUM(volume_gib_hours) AS volume_gib_hours, SUM(egress_gib) AS egress_gib,
                SUM(cost_cents) AS cost_cents, COUNT(*) AS samples
         FROM cost_samples WHERE project = $1 AND at >= $2
         GROUP BY environment, service ORDER BY environment, service",
    )
    .bind(project)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn environment_spend_cents(conn: &mut Conn, project: &str, environment: &str, since: i64) -> Result<f64> {
    Ok(sqlx::query_scalar::<_, f64>(
        "SELECT COALESCE(SUM(cost_cents), 0.0) FROM cost_samples WHERE project = $1 AND environment = $2 AND at >= $3",
    )
    .bind(project)
    .bind(environment)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?)
}

// --- budgets and paused environments ------------------------------------------------------------

pub async fn budgeted_environments(conn: &mut Conn) -> Result<Vec<Environment>> {
    Ok(sqlx::query_as::<_, Environment>(
        "SELECT * FROM environments WHERE budget_cents IS NOT NULL AND budget_cents > 0 ORDER BY project, name",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Compares the month's spend with the budget and reports a level the first time it is reached in
/// the month (`budget_state` remembers the last level reported for `budget_month`). At 100% a
/// non-prod environment is paused, in the same transaction.
pub async fn budget_check(conn: &mut Conn, project: &str, name: &str, now: i64) -> Result<BudgetLevel> {
    let environment = get_environment(conn, project, name).await?;
    let Some(budget) = environment.budget_cents.filter(|b| *b > 0) else {
        return Ok(BudgetLevel::Ok);
    };
    let (month, month_start) = month_of(now);
    let spend = environment_spend_cents(conn, project, name, month_start).await?;
    let percent = spend * 100.0 / budget as f64;
    let (level, state) = if percent >= 100.0 {
        (BudgetLevel::Exceeded(percent), budget_state::EXCEEDED)
    } else if percent >= 80.0 {
        (BudgetLevel::Warn(percent), budget_state::WARNED)
    } else {
        (BudgetLevel::Ok, budget_state::OK)
    };
    let (row_month, row_state) = sqlx::query_as::<_, (Option<String>, Option<String>)>(
        "SELECT budget_month, budget_state FROM environments WHERE project = $1 AND name = $2",
    )
    .bind(project)
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let reported = match row_month.as_deref() == Some(month.as_str()) {
        true => row_state.as_deref().map_or(0, budget_state::rank),
        false => 0,
    };
    if budget_state::rank(state) <= reported {
        if row_month.as_deref() != Some(month.as_str()) {
            set_budget_state(conn, project, name, &month, budget_state::OK).await?;
        }
        return Ok(BudgetLevel::Ok);
    }
    set_budget_state(conn, project, name, &month, state).await?;
    let entity = format!("{project}/{name}");
    let mut diff = json!({"month": month, "spend_cents": spend, "budget_cents": budget, "percent": percent});
    if let BudgetLevel::Exceeded(_) = level
        && name != "prod"
        && environment.paused_at.is_none()
    {
        pause(conn, project, name, now).await?;
        diff["paused"] = json!(true);
    }
    let action = if state == budget_state::EXCEEDED {
        "budget.exceeded"
    } else {
        "budget.warn"
    };
    audit(
        conn,
        "scheduler",
        change(action, "environment", &entity, Some(project), diff),
    )
    .await?;
    Ok(level)
}

async fn set_budget_state(conn: &mut Conn, project: &str, name: &str, month: &str, state: &str) -> Result<()> {
    sqlx::query("UPDATE environments SET budget_month = $3, budget_state = $4 WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .bind(month)
        .bind(state)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn pause(conn: &mut Conn, project: &str, name: &str, now: i64) -> Result<Environment> {
    Ok(sqlx::query_as::<_, Environment>(
        "UPDATE environments SET paused_at = COALESCE(paused_at, $3) WHERE project = $1 AND name = $2 RETURNING *",
    )
    .bind(project)
    .bind(name)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn pause_environment(
    conn: &mut Conn,
    actor: &str,
    project: &str,
    name: &str,
    now: i64,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    if name == "prod" {
        return Err(StoreError::Invalid(format!(
            "environment `prod` of project `{project}` cannot be paused; raise its budget or scale its services instead"
        )));
    }
    let environment = pause(conn, project, name, now).await?;
    if before.paused_at.is_none() {
        let entity = format!("{project}/{name}");
        audit(
            conn,
            actor,
            change("environment.pause", "environment", &entity, Some(project), json!({})),
        )
        .await?;
    }
    Ok(environment)
}

/// Lifts a pause and starts the environment's services again: each service's current release is
/// redeployed (a deployment with reason `resume`, in this transaction).
pub async fn resume_environment(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
    actor: &str,
    project: &str,
    name: &str,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    let environment = sqlx::query_as::<_, Environment>(
        "UPDATE environments SET paused_at = NULL WHERE project = $1 AND name = $2 RETURNING *",
    )
    .bind(project)
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(paused_at) = before.paused_at {
        let entity = format!("{project}/{name}");
        let diff = json!({"paused_at": {"from": paused_at, "to": null}});
        audit(
            conn,
            actor,
            change("environment.resume", "environment", &entity, Some(project), diff),
        )
        .await?;
        let services: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT service FROM deployments WHERE project = $1 AND environment = $2 AND status = 'succeeded'",
        )
        .bind(project)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        for service in services {
            if let Some(current) = super::current_deployment(conn, project, name, &service).await? {
                let request = DeploymentRequest {
                    project: project.to_string(),
                    service,
                    environment: name.to_string(),
                    release_id: current.release_id,
                    strategy: "rolling".into(),
                    reason: "resume".into(),
                };
                super::create_deployment(conn, jobs, actor, &request).await?;
            }
        }
    }
    Ok(environment)
}

// --- what the scheduler acts on -----------------------------------------------------------------

pub async fn deployed_services(conn: &mut Conn) -> Result<Vec<DeployedService>> {
    Ok(sqlx::query_as::<_, DeployedService>(
        "SELECT DISTINCT d.project, d.environment, d.service
         FROM deployments d
         JOIN services s ON s.project = d.project AND s.name = d.service
         JOIN environments e ON e.project = d.project AND e.name = d.environment
         WHERE d.status = 'succeeded' AND e.paused_at IS NULL
         ORDER BY d.project, d.environment, d.service",
    )
    .fetch_all(&mut *conn)
    .await?)
}

#[derive(sqlx::FromRow)]
struct PreviewActivity {
    project: String,
    name: String,
    created_at: i64,
    released_at: Option<i64>,
    deployed_at: Option<i64>,
}

/// Preview environments with no release or deployment activity since `cutoff`, one entry per
/// service released there (its latest release names the repository and branch).
pub async fn expired_previews(conn: &mut Conn, cutoff: i64) -> Result<Vec<ExpiredPreview>> {
    let previews = sqlx::query_as::<_, PreviewActivity>(
        "SELECT e.project, e.name, e.created_at,
                (SELECT MAX(r.updated_at) FROM releases r WHERE r.project = e.project AND r.environment = e.name)
                    AS released_at,
                (SELECT MAX(d.updated_at) FROM deployments d WHERE d.project = e.project AND d.environment = e.name)
                    AS deployed_at
         FROM environments e WHERE e.name LIKE 'preview-%' ORDER BY e.project, e.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut expired = Vec::new();
    for preview in previews {
        let last_activity = preview
            .created_at
            .max(preview.released_at.unwrap_or(0))
            .max(preview.deployed_at.unwrap_or(0));
        let Some(number) = preview
            .name
            .strip_prefix("preview-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if last_activity >= cutoff {
            continue;
        }
        let latest = sqlx::query_as::<_, Release>(
            "SELECT * FROM releases r WHERE r.project = $1 AND r.environment = $2
               AND r.id = (SELECT MAX(x.id) FROM releases x
                           WHERE x.project = r.project AND x.environment = r.environment AND x.service = r.service)
             ORDER BY r.service",
        )
        .bind(&preview.project)
        .bind(&preview.name)
        .fetch_all(&mut *conn)
        .await?;
        for release in latest {
            expired.push(ExpiredPreview {
                project: preview.project.clone(),
                environment: preview.name.clone(),
                service: release.service,
                repository: release.repository,
                branch: release.branch,
                number,
                last_activity,
            });
        }
    }
    Ok(expired)
}

/// Enqueues the teardown of an expired preview like a closed pull request's (superseding any
/// build of it in flight). Its unique key names the last activity, so asking again before the
/// preview is gone (or active again) changes nothing.
pub async fn enqueue_preview_teardown(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
    preview: &ExpiredPreview,
) -> Result<PipelineEnqueued> {
    let mut teardown = preview_teardown(
        &preview.project,
        &preview.service,
        &preview.repository,
        &preview.branch,
        preview.number,
    )?;
    teardown.unique_key = Some(format!(
        "preview-expiry:{}/{}/{}@{}",
        preview.project, preview.service, preview.environment, preview.last_activity
    ));
    let enqueued = jobs.pipeline(conn, teardown).await?;
    if !enqueued.duplicate {
        mark_superseded(conn, &enqueued.superseded, None).await?;
        let entity = format!("{}/{}", preview.project, preview.environment);
        let diff = json!({"service": preview.service, "idle_since": preview.last_activity, "pipeline": enqueued.id});
        audit(
            conn,
            "scheduler",
            change("preview.expire", "environment", &entity, Some(&preview.project), diff),
        )
        .await?;
    }
    Ok(enqueued)
}
