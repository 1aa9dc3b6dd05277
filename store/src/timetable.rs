//! Timetable and Waybill: the scheduler's leader lease, cron schedules kept in step with the
//! Service Specs, cron and one-off job runs (their history, for the `job-run` handler to report
//! to), cost samples and reports, monthly budgets and paused environments, and what the scheduler
//! acts on (deployed services to sample, idle previews to tear down).
//!
//! Cron schedules are evaluated in UTC. A scheduler that was down does not replay the fires it
//! missed: the first tick after it comes back fires each overdue job once (one catch-up run) and
//! moves it to its next fire after *now*.
//!
//! The operations (`timetable_ops.rs`) are compiled once per database like `ops.rs`, as a child of
//! a module that includes `ops.rs`, so that they share its private helpers (the enqueue path,
//! `mark_superseded`, the audit `change`) instead of copying them.

use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use enclii_queue::PipelineEnqueued;
use serde::{Deserialize, Serialize};

use super::{Db, Store, lite, pg};
use crate::error::Result;
use crate::model::Environment;
use crate::now_ms;

// --- records ------------------------------------------------------------------------------------

/// A cron job of a service's spec and when it fires next (epoch ms, UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CronSchedule {
    pub project: String,
    pub service: String,
    pub job: String,
    /// 5-field cron, evaluated in UTC.
    pub schedule: String,
    pub next_at: i64,
}

/// What [`Store::sync_cron_schedules`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CronSync {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// One run of a service's job: fired by cron or started by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobRunRecord {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub environment: String,
    /// The job's name in `spec.jobs`.
    pub job: String,
    /// `cron` or `manual`.
    pub trigger: String,
    /// See [`job_run_status`].
    pub status: String,
    /// The queue's `job-run` job (its logs are the run's logs).
    pub queue_job_id: Option<i64>,
    /// Attempts started so far.
    pub attempts: i32,
    pub exit_code: Option<i64>,
    /// Why it ended as it did (or why it was skipped).
    pub detail: Option<String>,
    /// The fire time it stands for (cron), or when it was asked for (manual).
    pub scheduled_for: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `scheduler` for cron runs, the caller for manual ones.
    pub created_by: String,
}

pub mod job_run_status {
    /// Its `job-run` job waits in the queue.
    pub const QUEUED: &str = "queued";
    /// An attempt is running (a failed attempt the queue retries runs again).
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
    /// A cron fire while the previous run was still queued or running: nothing ran.
    pub const SKIPPED: &str = "skipped";
    pub const FINAL: [&str; 4] = [SUCCEEDED, FAILED, CANCELLED, SKIPPED];
}

/// What one due cron job became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CronOutcome {
    /// A run was queued.
    Queued,
    /// The previous run is still in progress; a `skipped` run records it.
    Skipped,
    /// The service's environment is paused; nothing is recorded.
    Paused,
}

impl CronOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CronOutcome::Queued => "queued",
            CronOutcome::Skipped => "skipped",
            CronOutcome::Paused => "paused",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CronFire {
    pub project: String,
    pub service: String,
    pub job: String,
    pub outcome: CronOutcome,
    /// The run recorded (none for a paused environment).
    pub run: Option<JobRunRecord>,
}

/// A service's resource usage over one sampling interval, as the `cost-sample` handler measures
/// it, priced with [`Prices::cost_cents`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct NewCostSample {
    pub project: String,
    pub environment: String,
    pub service: String,
    /// End of the interval (epoch ms).
    pub at: i64,
    pub interval_secs: i64,
    pub cpu_seconds: f64,
    pub ram_gib_hours: f64,
    pub volume_gib_hours: f64,
    pub egress_gib: f64,
    pub cost_cents: f64,
    /// The target's cumulative CPU counter at `at` (nanoseconds), for the next sample's difference.
    pub cpu_counter_ns: Option<i64>,
    /// The target's cumulative sent-bytes counter at `at`, for the next sample's difference.
    pub egress_counter_bytes: Option<i64>,
}

impl NewCostSample {
    /// The sample with its cost computed from `prices`.
    pub fn priced(mut self, prices: &Prices) -> Self {
        self.cost_cents = prices.cost_cents(&self);
        self
    }
}

/// A stored cost sample.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct CostSampleRecord {
    pub id: i64,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub sample: NewCostSample,
}

/// Usage and cost of one service in one environment over a report's period.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CostLine {
    pub environment: String,
    pub service: String,
    pub cpu_seconds: f64,
    pub ram_gib_hours: f64,
    pub volume_gib_hours: f64,
    pub egress_gib: f64,
    pub cost_cents: f64,
    /// Samples summed (one per 5 minutes of a running service by default).
    pub samples: i64,
}

/// What resources cost, in cents. The defaults are in the range of public clouds' on-demand list
/// prices (mid-2020s): a vCPU-hour 4¢, a GiB of memory for an hour 0.5¢, a GiB of block storage
/// for a month 10¢ (≈ 0.0137¢ an hour), a GiB of internet egress 9¢. Showback, not billing: set
/// your own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub cpu_hour_cents: f64,
    pub ram_gib_hour_cents: f64,
    pub volume_gib_hour_cents: f64,
    pub egress_gib_cents: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            cpu_hour_cents: 4.0,
            ram_gib_hour_cents: 0.5,
            volume_gib_hour_cents: 10.0 / 730.0,
            egress_gib_cents: 9.0,
        }
    }
}

impl Prices {
    /// The cost of a sample's usage, in cents.
    pub fn cost_cents(&self, sample: &NewCostSample) -> f64 {
        sample.cpu_seconds / 3600.0 * self.cpu_hour_cents
            + sample.ram_gib_hours * self.ram_gib_hour_cents
            + sample.volume_gib_hours * self.volume_gib_hour_cents
            + sample.egress_gib * self.egress_gib_cents
    }
}

/// A budget level newly reached this month (each is reported once a month); `Ok` otherwise. The
/// number is the month's spend as a percentage of the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetLevel {
    Ok,
    /// 80% or more.
    Warn(f64),
    /// 100% or more: a non-prod environment has been paused.
    Exceeded(f64),
}

/// The last budget level reported for `environments.budget_month`.
pub mod budget_state {
    pub const OK: &str = "ok";
    pub const WARNED: &str = "warned";
    pub const EXCEEDED: &str = "exceeded";

    pub(crate) fn rank(state: &str) -> u8 {
        match state {
            WARNED => 1,
            EXCEEDED => 2,
            _ => 0,
        }
    }
}

/// A service running a release (it has a succeeded deployment) in an environment that is not
/// paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeployedService {
    pub project: String,
    pub environment: String,
    pub service: String,
}

/// A service's preview that has been idle past the TTL, with what its teardown needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredPreview {
    pub project: String,
    /// `preview-<number>`.
    pub environment: String,
    pub service: String,
    /// From the preview's latest release of the service.
    pub repository: String,
    pub branch: String,
    pub number: u64,
    /// The newest release or deployment in the environment (or its creation), epoch ms.
    pub last_activity: i64,
}

/// A cron job that is due, with its service's home environment (and whether that is paused).
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct DueCron {
    pub project: String,
    pub service: String,
    pub job: String,
    pub schedule: String,
    pub next_at: i64,
    pub environment: String,
    pub paused_at: Option<i64>,
}

// --- time helpers -------------------------------------------------------------------------------

/// The first fire of a 5-field cron schedule strictly after `after_ms` (UTC), as epoch ms; `None`
/// if the schedule does not parse or never fires.
pub fn next_fire(schedule: &str, after_ms: i64) -> Option<i64> {
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .ok()?;
    let after = Utc.timestamp_millis_opt(after_ms).single()?;
    let next = cron.find_next_occurrence(&after, false).ok()?;
    Some(next.timestamp_millis())
}

/// `YYYY-MM` of a time and the epoch ms its month began (UTC).
pub(crate) fn month_of(at_ms: i64) -> (String, i64) {
    let at = Utc.timestamp_millis_opt(at_ms).single().unwrap_or_else(Utc::now);
    let start = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .map_or(0, |s| s.timestamp_millis());
    (format!("{:04}-{:02}", at.year(), at.month()), start)
}

pub(crate) fn rfc3339(at_ms: i64) -> String {
    Utc.timestamp_millis_opt(at_ms).single().map_or_else(
        || at_ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// Due cron jobs read per [`Store::fire_due_cron`] round.
const DUE_BATCH: i64 = 200;

impl Store {
    // --- leader lease ---------------------------------------------------------------------------

    /// Takes the lease `name` for `holder` for `ttl` if it is free or expired, or renews it if
    /// `holder` already has it; `false` while another holder's lease runs. One atomic upsert.
    pub async fn try_lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis() as i64;
        write!(self, |conn, ops, _jobs| ops::tt::try_lead(
            conn,
            name,
            holder,
            ttl_ms,
            now_ms()
        )
        .await)
    }
    /// Gives the lease up (if `holder` has it), so another process can lead at once.
    pub async fn resign(&self, name: &str, holder: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::tt::resign(conn, name, holder).await)
    }

    // --- cron -----------------------------------------------------------------------------------

    /// Changes whenever a service is created, updated or deleted.
    pub async fn services_fingerprint(&self) -> Result<(i64, i64)> {
        read!(self, |conn, ops| ops::tt::services_fingerprint(conn).await)
    }
    /// Brings the cron schedules in step with the services' specs: new jobs are scheduled from
    /// now, a changed schedule is re-timed from now, removed jobs (and services) are dropped.
    pub async fn sync_cron_schedules(&self) -> Result<CronSync> {
        write!(self, |conn, ops, _jobs| ops::tt::sync_cron(conn, now_ms()).await)
    }
    pub async fn cron_schedules(&self, project: &str) -> Result<Vec<CronSchedule>> {
        read!(self, |conn, ops| ops::tt::cron_schedules(conn, project).await)
    }
    /// Fires every cron job due at `now_ms`, each in a transaction of its own: a `queued` run and
    /// its `job-run` job, or a `skipped` run while the previous one is still queued or running;
    /// nothing in a paused environment. Each job then moves to its first fire after `now_ms`
    /// (missed fires are not replayed). A job another scheduler fired meanwhile is left alone.
    pub async fn fire_due_cron(&self, now_ms: i64) -> Result<Vec<CronFire>> {
        let mut fired = Vec::new();
        loop {
            let due = read!(self, |conn, ops| ops::tt::due_cron(conn, now_ms, DUE_BATCH).await)?;
            let full = due.len() as i64 == DUE_BATCH;
            for due in &due {
                let fire = write!(self, |conn, ops, jobs| ops::tt::fire_cron(conn, &jobs, due, now_ms)
                    .await)?;
                fired.extend(fire);
            }
            if !full {
                return Ok(fired);
            }
        }
    }

    // --- job runs -------------------------------------------------------------------------------

    /// Runs a job of the service's spec now, in the service's environment (audited `job.run`).
    /// Refused when the spec has no such job (the error lists the jobs it has) or the environment
    /// is paused.
    pub async fn run_job_now(&self, actor: &str, project: &str, service: &str, job: &str) -> Result<JobRunRecord> {
        write!(self, |conn, ops, jobs| ops::tt::run_job_now(
            conn,
            &jobs,
            actor,
            project,
            service,
            job,
            now_ms()
        )
        .await)
    }
    pub async fn job_run(&self, id: i64) -> Result<JobRunRecord> {
        read!(self, |conn, ops| ops::tt::job_run(conn, id).await)
    }
    /// For the `job-run` handler: attempt `attempt` (1-based) started.
    pub async fn job_run_started(&self, id: i64, attempt: i32) -> Result<JobRunRecord> {
        write!(self, |conn, ops, _jobs| ops::tt::job_run_started(
            conn,
            id,
            attempt,
            now_ms()
        )
        .await)
    }
    /// For the `job-run` handler: the run ended `succeeded`, `failed` (on its last attempt, or a
    /// failure no retry fixes) or `cancelled`. Idempotent: a run already ended is returned as is.
    pub async fn job_run_finished(
        &self,
        id: i64,
        status: &str,
        exit_code: Option<i64>,
        detail: Option<&str>,
    ) -> Result<JobRunRecord> {
        write!(self, |conn, ops, _jobs| ops::tt::job_run_finished(
            conn,
            id,
            status,
            exit_code,
            detail,
            now_ms()
        )
        .await)
    }
    /// A service's job runs, newest first; `job` narrows to one job.
    pub async fn list_job_runs(
        &self,
        project: &str,
        service: &str,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRunRecord>> {
        read!(self, |conn, ops| ops::tt::list_job_runs(
            conn, project, service, job, limit
        )
        .await)
    }

    // --- cost and budgets -----------------------------------------------------------------------

    pub async fn insert_cost_sample(&self, sample: &NewCostSample) -> Result<CostSampleRecord> {
        write!(self, |conn, ops, _jobs| ops::tt::insert_cost_sample(conn, sample).await)
    }
    /// The newest sample of a service in an environment (its CPU counter is where the next
    /// sample's difference starts).
    pub async fn last_cost_sample(
        &self,
        project: &str,
        environment: &str,
        service: &str,
    ) -> Result<Option<CostSampleRecord>> {
        read!(self, |conn, ops| ops::tt::last_cost_sample(
            conn,
            project,
            environment,
            service
        )
        .await)
    }
    /// Usage and cost per environment and service of samples taken at or after `since_ms`.
    pub async fn cost_report(&self, project: &str, since_ms: i64) -> Result<Vec<CostLine>> {
        read!(self, |conn, ops| ops::tt::cost_report(conn, project, since_ms).await)
    }
    /// What an environment's samples since `month_start_ms` cost, in cents.
    pub async fn environment_spend_cents(&self, project: &str, environment: &str, month_start_ms: i64) -> Result<f64> {
        read!(self, |conn, ops| ops::tt::environment_spend_cents(
            conn,
            project,
            environment,
            month_start_ms
        )
        .await)
    }
    /// Environments with a budget, for the scheduler's budget checks.
    pub async fn budgeted_environments(&self) -> Result<Vec<Environment>> {
        read!(self, |conn, ops| ops::tt::budgeted_environments(conn).await)
    }
    /// Checks the month's spend (of `now_ms`'s month, UTC) against the environment's budget.
    /// Returns a level the first time it is reached in the month — audited `budget.warn` at 80%,
    /// `budget.exceeded` at 100%, when a non-prod environment is also paused — and `Ok` otherwise.
    pub async fn budget_check(&self, project: &str, environment: &str, now_ms: i64) -> Result<BudgetLevel> {
        write!(self, |conn, ops, _jobs| ops::tt::budget_check(
            conn,
            project,
            environment,
            now_ms
        )
        .await)
    }
    /// Pauses an environment: no cron runs, one-off runs or cost samples until it is resumed.
    /// `prod` is never paused.
    pub async fn pause_environment(&self, actor: &str, project: &str, environment: &str) -> Result<Environment> {
        write!(self, |conn, ops, _jobs| ops::tt::pause_environment(
            conn,
            actor,
            project,
            environment,
            now_ms()
        )
        .await)
    }
    /// Lifts a budget pause and redeploys the environment's current releases; the budget is not
    /// reported again until its next level (or month).
    pub async fn resume_environment(&self, actor: &str, project: &str, environment: &str) -> Result<Environment> {
        write!(self, |conn, ops, jobs| ops::tt::resume_environment(
            conn,
            &jobs,
            actor,
            project,
            environment
        )
        .await)
    }

    // --- what the scheduler acts on -------------------------------------------------------------

    /// `(project, environment, service)` of every service with a succeeded deployment in an
    /// environment that is not paused: what `cost-sample` measures.
    pub async fn deployed_services(&self) -> Result<Vec<DeployedService>> {
        read!(self, |conn, ops| ops::tt::deployed_services(conn).await)
    }
    /// Preview environments (`preview-<n>`) without a release or deployment for `ttl`, per service.
    pub async fn expired_previews(&self, ttl: Duration, now_ms: i64) -> Result<Vec<ExpiredPreview>> {
        let cutoff = now_ms - ttl.as_millis() as i64;
        read!(self, |conn, ops| ops::tt::expired_previews(conn, cutoff).await)
    }
    /// Enqueues an expired preview's `preview-teardown` (audited `preview.expire`); asking again
    /// for the same idle preview returns the pipeline already enqueued (`duplicate`).
    pub async fn enqueue_preview_teardown(&self, preview: &ExpiredPreview) -> Result<PipelineEnqueued> {
        write!(self, |conn, ops, jobs| ops::tt::enqueue_preview_teardown(
            conn, &jobs, preview
        )
        .await)
    }
}
