//! Cron schedules kept in step with the Service Specs, and firing the due ones.

use crate::db::{Conn, query, query_as};
use crate::error::Result;
use crate::model::*;
use crate::projects::require_project;
use crate::timetable::runs::{NewRun, enqueue_run, finish_run, insert_run};
use crate::timetable::*;
use crate::{Store, now_ms};
use std::collections::HashMap;

/// Due cron jobs read per [`Store::fire_due_cron`] round.
const DUE_BATCH: i64 = 200;

/// The `(name, schedule)` of each job of a service's spec (none when the stored spec no longer
/// reads: such a service schedules nothing until its spec is applied again).
pub(crate) fn spec_jobs(service: &Service) -> Vec<(String, String)> {
    service
        .typed_spec()
        .map(|spec| spec.spec.jobs.into_iter().map(|job| (job.name, job.schedule)).collect())
        .unwrap_or_default()
}

/// A fingerprint of the services table that changes whenever a service is created, updated or
/// deleted, so the scheduler re-syncs schedules only when a spec may have changed.
pub(crate) async fn services_fingerprint(conn: &mut Conn<'_>) -> Result<(i64, i64)> {
    let (count, latest) = query_as::<(i64, Option<i64>)>("SELECT COUNT(*), MAX(updated_at) FROM services")
        .fetch_one(&mut *conn)
        .await?;
    Ok((count, latest.unwrap_or(0)))
}

/// Brings `cron_schedules` in step with the specs: adds new jobs, re-times jobs whose schedule
/// changed (from `now`), removes jobs no spec has any more.
pub(crate) async fn sync_cron(conn: &mut Conn<'_>, now: i64) -> Result<CronSync> {
    let services = query_as::<Service>("SELECT * FROM services")
        .fetch_all(&mut *conn)
        .await?;
    let rows = query_as::<CronSchedule>("SELECT * FROM cron_schedules")
        .fetch_all(&mut *conn)
        .await?;
    let mut existing: HashMap<(String, String, String), CronSchedule> = rows
        .into_iter()
        .map(|row| ((row.project.clone(), row.service.clone(), row.job.clone()), row))
        .collect();
    let mut sync = CronSync::default();
    for service in &services {
        for (job, schedule) in spec_jobs(service) {
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
            query(
                "INSERT INTO cron_schedules (project, service, job, schedule, next_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project, service, job) DO UPDATE SET schedule = $4, next_at = $5",
            )
            .binds((&service.project, &service.name, &job, &schedule, next_at))
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
        query("DELETE FROM cron_schedules WHERE project = $1 AND service = $2 AND job = $3")
            .binds((&project, &service, &job))
            .execute(&mut *conn)
            .await?;
        sync.removed += 1;
    }
    Ok(sync)
}

pub(crate) async fn cron_schedules(conn: &mut Conn<'_>, project: &str) -> Result<Vec<CronSchedule>> {
    require_project(conn, project).await?;
    query_as::<CronSchedule>("SELECT * FROM cron_schedules WHERE project = $1 ORDER BY service, job")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn due_cron(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<DueCron>> {
    query_as::<DueCron>(
        "SELECT c.project, c.service, c.job, c.schedule, c.next_at, s.environment, e.paused_at
         FROM cron_schedules c
         JOIN services s ON s.project = c.project AND s.name = c.service
         LEFT JOIN environments e ON e.project = s.project AND e.name = s.environment
         WHERE c.next_at <= $1 ORDER BY c.next_at LIMIT $2",
    )
    .binds((now, limit))
    .fetch_all(&mut *conn)
    .await
}

/// How long a run may stay `queued` or `running` before a cron fire treats it as lost: every
/// attempt timing out, with the longest backoff between attempts, and an hour to spare.
pub(crate) fn lost_after_ms() -> i64 {
    use enclii_queue::JobKind;
    let policy = enclii_domain::jobs::JobRun::policy();
    let attempts = i64::from(policy.max_attempts.max(1));
    let timeout = policy.timeout.as_millis() as i64;
    attempts * (timeout + 600_000) + 3_600_000
}

/// Fires one due cron job, if it is still due as read (`next_at` unchanged: no other scheduler
/// fired it meanwhile). Missed fires are not replayed: the next fire is the first after `now`.
pub(crate) async fn fire_cron(conn: &mut Conn<'_>, due: &DueCron, now: i64) -> Result<Option<CronFire>> {
    let next_at = next_fire(&due.schedule, now).unwrap_or(i64::MAX);
    let claimed = query(
        "UPDATE cron_schedules SET next_at = $4 WHERE project = $1 AND service = $2 AND job = $3 AND next_at = $5",
    )
    .binds((&due.project, &due.service, &due.job, next_at, due.next_at))
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
    let active = query_as::<JobRunRecord>(
        "SELECT * FROM job_runs WHERE project = $1 AND service = $2 AND job = $3 AND status IN ('queued', 'running')
         ORDER BY id DESC",
    )
    .binds((&due.project, &due.service, &due.job))
    .fetch_all(&mut *conn)
    .await?;
    let mut still_running = None;
    for run in active {
        if now - run.created_at > lost_after_ms() {
            // Its worker never reported an end (the handler must finish a run on its last attempt).
            finish_run(
                conn,
                run.id,
                JobRunStatus::Failed,
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
        trigger: JobRunTrigger::Cron,
        scheduled_for: due.next_at,
        created_by: "scheduler",
    };
    if let Some(previous) = still_running {
        let detail = format!(
            "skipped: the previous run ({}) is still {}; cron runs of one job never overlap",
            previous.id, previous.status
        );
        let run = insert_run(conn, &new, JobRunStatus::Skipped, Some(&detail), now).await?;
        return Ok(Some(fire(CronOutcome::Skipped, Some(run))));
    }
    let run = enqueue_run(conn, &new, now).await?;
    Ok(Some(fire(CronOutcome::Queued, Some(run))))
}

impl Store {
    /// Changes whenever a service is created, updated or deleted.
    pub async fn services_fingerprint(&self) -> Result<(i64, i64)> {
        self.read(async |conn| services_fingerprint(conn).await).await
    }
    /// Brings the cron schedules in step with the services' specs: new jobs are scheduled from
    /// now, a changed schedule is re-timed from now, removed jobs (and services) are dropped.
    pub async fn sync_cron_schedules(&self) -> Result<CronSync> {
        self.write(async |conn| sync_cron(conn, now_ms()).await).await
    }
    pub async fn cron_schedules(&self, project: &str) -> Result<Vec<CronSchedule>> {
        self.read(async |conn| cron_schedules(conn, project).await).await
    }
    /// Fires every cron job due at `now_ms`, each in a transaction of its own: a `queued` run and
    /// its `job-run` job, or a `skipped` run while the previous one is still queued or running;
    /// nothing in a paused environment. Each job then moves to its first fire after `now_ms`
    /// (missed fires are not replayed). A job another scheduler fired meanwhile is left alone.
    pub async fn fire_due_cron(&self, now_ms: i64) -> Result<Vec<CronFire>> {
        let mut fired = Vec::new();
        loop {
            let due = self.read(async |conn| due_cron(conn, now_ms, DUE_BATCH).await).await?;
            let full = due.len() as i64 == DUE_BATCH;
            for due in &due {
                let fire = self.write(async |conn| fire_cron(conn, due, now_ms).await).await?;
                fired.extend(fire);
            }
            if !full {
                return Ok(fired);
            }
        }
    }
}
