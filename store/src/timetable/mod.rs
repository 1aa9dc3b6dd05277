//! Timetable: the scheduler's leader lease (`lease`), cron schedules kept in step with the Service
//! Specs (`cron`), cron and one-off job runs — their history, for the `job-run` handler to report
//! to (`runs`) — and idle previews to tear down (`previews`). Cost and budgets are the Waybill's
//! (`crate::waybill`).
//!
//! Cron schedules are evaluated in UTC. A scheduler that was down does not replay the fires it
//! missed: the first tick after it comes back fires each overdue job once (one catch-up run) and
//! moves it to its next fire after *now*.

mod cron;
mod lease;
mod previews;
mod runs;

use chrono::{Datelike, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use serde::Serialize;

use crate::vocabulary::{JobRunStatus, JobRunTrigger};

/// A cron job of a service's spec and when it fires next (epoch ms, UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct JobRunRecord {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub environment: String,
    /// The job's name in `spec.jobs`.
    pub job: String,
    pub trigger: JobRunTrigger,
    pub status: JobRunStatus,
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
