//! Job runs: cron and one-off runs of a service's jobs, as the `job-run` handler reports them.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query_as};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::get_environment;
use crate::services::require_service;
use crate::timetable::cron::spec_jobs;
use crate::timetable::*;
use crate::{Store, now_ms};
use enclii_queue::NewJob;

pub(crate) struct NewRun<'a> {
    pub(crate) project: &'a str,
    pub(crate) service: &'a str,
    pub(crate) environment: &'a str,
    pub(crate) job: &'a str,
    pub(crate) trigger: JobRunTrigger,
    pub(crate) scheduled_for: i64,
    pub(crate) created_by: &'a str,
}

pub(crate) async fn insert_run(
    conn: &mut Conn<'_>,
    new: &NewRun<'_>,
    status: JobRunStatus,
    detail: Option<&str>,
    now: i64,
) -> Result<JobRunRecord> {
    let finished_at = (status == JobRunStatus::Skipped).then_some(now);
    query_as::<JobRunRecord>(
        "INSERT INTO job_runs (project, service, environment, job, trigger, status, attempts, detail, scheduled_for,
                               created_at, finished_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11) RETURNING *",
    )
    .binds((
        new.project,
        new.service,
        new.environment,
        new.job,
        new.trigger,
        status,
        detail,
        new.scheduled_for,
        now,
        finished_at,
        new.created_by,
    ))
    .fetch_one(&mut *conn)
    .await
}

/// A `queued` run and its `job-run` job (the kind's retry policy; a key unique to the run, so the
/// queue never holds two jobs for one run).
pub(crate) async fn enqueue_run(conn: &mut Conn<'_>, new: &NewRun<'_>, now: i64) -> Result<JobRunRecord> {
    let run = insert_run(conn, new, JobRunStatus::Queued, None, now).await?;
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
    let job_id = conn.enqueue(job).await?;
    query_as::<JobRunRecord>("UPDATE job_runs SET queue_job_id = $2 WHERE id = $1 RETURNING *")
        .binds((run.id, job_id))
        .fetch_one(&mut *conn)
        .await
}

/// Runs a job of a service's spec now (`manual`), in the service's environment. Unlike cron runs,
/// a manual run does not wait for a run still in progress: someone asked for it.
pub(crate) async fn run_job_now(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    service: &str,
    job: &str,
    now: i64,
) -> Result<JobRunRecord> {
    let found = require_service(conn, project, service).await?;
    let names: Vec<String> = spec_jobs(&found).into_iter().map(|(name, _)| name).collect();
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
        trigger: JobRunTrigger::Manual,
        scheduled_for: now,
        created_by: actor,
    };
    let run = enqueue_run(conn, &new, now).await?;
    let diff = json!({"service": service, "environment": found.environment, "job": job, "queue_job": run.queue_job_id});
    let entity = run.id.to_string();
    audit(conn, actor, change("job.run", "job_run", &entity, Some(project), diff)).await?;
    Ok(run)
}

pub(crate) fn refuse_paused(environment: &Environment, what: &str) -> Result<()> {
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

pub(crate) async fn job_run(conn: &mut Conn<'_>, id: i64) -> Result<JobRunRecord> {
    query_as::<JobRunRecord>("SELECT * FROM job_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job run {id} does not exist")))
}

/// An attempt of a run started. A retried attempt reopens a run a failed attempt ended.
pub(crate) async fn job_run_started(conn: &mut Conn<'_>, id: i64, attempt: i32, now: i64) -> Result<JobRunRecord> {
    let run = job_run(conn, id).await?;
    query_as::<JobRunRecord>(
        "UPDATE job_runs SET status = 'running', attempts = $2, started_at = COALESCE(started_at, $3),
             finished_at = NULL, exit_code = NULL, detail = NULL
         WHERE id = $1 AND status IN ('queued', 'running', 'failed') RETURNING *",
    )
    .binds((id, attempt, now))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::Conflict(format!(
            "job run {id} is {}; only a queued, running or failed run can start an attempt",
            run.status
        ))
    })
}

pub(crate) async fn finish_run(
    conn: &mut Conn<'_>,
    id: i64,
    status: JobRunStatus,
    exit_code: Option<i64>,
    detail: Option<&str>,
    now: i64,
) -> Result<Option<JobRunRecord>> {
    query_as::<JobRunRecord>(
        "UPDATE job_runs SET status = $2, exit_code = $3, detail = $4, finished_at = $5
         WHERE id = $1 AND status IN ('queued', 'running') RETURNING *",
    )
    .binds((id, status, exit_code, detail, now))
    .fetch_optional(&mut *conn)
    .await
}

/// Ends a run. Ending a run that already ended changes nothing and returns it as it is (a worker
/// may report twice).
pub(crate) async fn job_run_finished(
    conn: &mut Conn<'_>,
    id: i64,
    status: JobRunStatus,
    exit_code: Option<i64>,
    detail: Option<&str>,
    now: i64,
) -> Result<JobRunRecord> {
    if !status.is_final() || status == JobRunStatus::Skipped {
        return Err(StoreError::Invalid(format!(
            "`{status}` is not how a run ends; use `succeeded`, `failed` or `cancelled`"
        )));
    }
    match finish_run(conn, id, status, exit_code, detail, now).await? {
        Some(run) => Ok(run),
        None => job_run(conn, id).await,
    }
}

pub(crate) async fn list_job_runs(
    conn: &mut Conn<'_>,
    project: &str,
    service: &str,
    job: Option<&str>,
    limit: i64,
) -> Result<Vec<JobRunRecord>> {
    require_service(conn, project, service).await?;
    query_as::<JobRunRecord>(
        "SELECT * FROM job_runs WHERE project = $1 AND service = $2 AND ($3 IS NULL OR job = $3)
         ORDER BY id DESC LIMIT $4",
    )
    .binds((project, service, job, limit.clamp(1, 500)))
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    /// Runs a job of the service's spec now, in the service's environment (audited `job.run`).
    /// Refused when the spec has no such job (the error lists the jobs it has) or the environment
    /// is paused.
    pub async fn run_job_now(&self, actor: &str, project: &str, service: &str, job: &str) -> Result<JobRunRecord> {
        self.write(async |conn| run_job_now(conn, actor, project, service, job, now_ms()).await)
            .await
    }
    pub async fn job_run(&self, id: i64) -> Result<JobRunRecord> {
        self.read(async |conn| job_run(conn, id).await).await
    }
    /// For the `job-run` handler: attempt `attempt` (1-based) started.
    pub async fn job_run_started(&self, id: i64, attempt: i32) -> Result<JobRunRecord> {
        self.write(async |conn| job_run_started(conn, id, attempt, now_ms()).await)
            .await
    }
    /// For the `job-run` handler: the run ended `succeeded`, `failed` (on its last attempt, or a
    /// failure no retry fixes) or `cancelled`. Idempotent: a run already ended is returned as is.
    pub async fn job_run_finished(
        &self,
        id: i64,
        status: JobRunStatus,
        exit_code: Option<i64>,
        detail: Option<&str>,
    ) -> Result<JobRunRecord> {
        self.write(async |conn| job_run_finished(conn, id, status, exit_code, detail, now_ms()).await)
            .await
    }
    /// A service's job runs, newest first; `job` narrows to one job.
    pub async fn list_job_runs(
        &self,
        project: &str,
        service: &str,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRunRecord>> {
        self.read(async |conn| list_job_runs(conn, project, service, job, limit).await)
            .await
    }
}
