//! The job model shared by every backend: what is enqueued, what a worker claims, how it ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::QueueError;

/// Backend-assigned job identifier, unique within one queue database.
pub type JobId = i64;

/// Backend-assigned pipeline identifier.
pub type PipelineId = i64;

/// Where a job is in its life.
///
/// `pending` → (deps done) → `available` → `running` → `completed` | `scheduled` (retry) | `dead` | `cancelled`.
/// `scheduled` jobs (delayed or waiting for a retry) become `available` when their `run_at` passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A pipeline step waiting for the steps it needs.
    Pending,
    /// Waiting for `run_at` (a delayed job or a retry with backoff).
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker that holds a lease on it.
    Running,
    Completed,
    /// Failed terminally (attempts exhausted, or the handler aborted); an operator can retry it.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Dead | JobState::Cancelled)
    }
}

impl std::str::FromStr for JobState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| QueueError::Corrupt(format!("unknown job state {s:?}")))
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]` (the AWS "full jitter" schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// A random delay drawn from `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// How a kind of job is run: its priority, attempts, timeout and retry schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPolicy {
    /// Lower runs first (0 is the most urgent); within a project, ties run oldest first.
    pub priority: i16,
    pub max_attempts: u32,
    /// The handler is stopped (its future dropped, its cancellation token fired) after this long.
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl JobPolicy {
    /// Rebuilds a policy from its stored columns (milliseconds).
    pub(crate) fn from_stored(
        priority: i64,
        max_attempts: i64,
        timeout_ms: i64,
        backoff_base_ms: i64,
        backoff_max_ms: i64,
    ) -> Self {
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Self {
            priority: priority as i16,
            max_attempts: max_attempts.max(1) as u32,
            timeout: ms(timeout_ms),
            backoff: Backoff::new(ms(backoff_base_ms), ms(backoff_max_ms)),
        }
    }

    pub(crate) fn timeout_ms(&self) -> i64 {
        self.timeout.as_millis() as i64
    }
}

impl Default for JobPolicy {
    fn default() -> Self {
        Self {
            priority: 5,
            max_attempts: 5,
            timeout: Duration::from_secs(60),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

/// A job kind with a typed payload. Implementors are plain serde structs.
pub trait JobKind: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The stable, wire-level name of the kind (`build`, `deploy`, …).
    const KIND: &'static str;
    fn policy() -> JobPolicy;
}

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub kind: String,
    /// The project the job is accounted to for fairness, caps and rate limits.
    pub project: String,
    pub payload: serde_json::Value,
    pub policy: JobPolicy,
    /// Not before this time; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Enqueueing a second job with the same key returns the first one instead.
    pub unique_key: Option<String>,
}

impl NewJob {
    /// An untyped job; prefer [`NewJob::typed`]. Inside a traced scope ([`crate::trace::scope`])
    /// an object payload gets the current trace under the reserved key `_trace`.
    pub fn new(kind: impl Into<String>, project: impl Into<String>, mut payload: serde_json::Value) -> Self {
        crate::trace::stamp(&mut payload);
        Self {
            kind: kind.into(),
            project: project.into(),
            payload,
            policy: JobPolicy::default(),
            run_at: None,
            unique_key: None,
        }
    }

    /// A job of a typed kind, with that kind's policy.
    pub fn typed<J: JobKind>(project: impl Into<String>, job: &J) -> Result<Self, QueueError> {
        let payload = serde_json::to_value(job).map_err(|source| QueueError::Payload {
            kind: J::KIND.to_string(),
            source,
        })?;
        Ok(Self {
            policy: J::policy(),
            ..Self::new(J::KIND, project, payload)
        })
    }

    pub fn with_policy(mut self, policy: JobPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn with_priority(mut self, priority: i16) -> Self {
        self.policy.priority = priority;
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Rejects what no backend should store: empty names, zero attempts, a zero timeout.
    pub fn validate(&self) -> Result<(), QueueError> {
        let invalid = |field: &str, problem: &str| {
            Err(QueueError::InvalidJob {
                field: field.to_string(),
                problem: problem.to_string(),
            })
        };
        if self.kind.trim().is_empty() {
            return invalid("kind", "must not be empty");
        }
        if self.project.trim().is_empty() {
            return invalid("project", "must not be empty");
        }
        if self.policy.max_attempts == 0 {
            return invalid("policy.max_attempts", "must be at least 1");
        }
        if self.policy.timeout.is_zero() {
            return invalid("policy.timeout", "must be greater than zero");
        }
        if self.unique_key.as_deref().is_some_and(|k| k.is_empty()) {
            return invalid("unique_key", "must not be empty when set");
        }
        Ok(())
    }
}

/// The result of enqueueing one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    pub id: JobId,
    /// True when the unique key matched an existing job and nothing new was inserted.
    pub duplicate: bool,
}

/// A claim of a job: only the holder of the current lease may renew or finish it.
///
/// `token` counts the job's claims and only ever grows — unlike `attempt`, which a hand-back
/// gives back and an operator's retry resets — so an old lease can never match a newer claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub job: JobId,
    pub token: u32,
}

/// A job handed to a worker, with the lease it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub project: String,
    pub payload: serde_json::Value,
    /// Which attempt this is (1-based), counted against `policy.max_attempts`.
    pub attempt: u32,
    /// Identifies this claim; see [`Lease`].
    pub lease_token: u32,
    pub policy: JobPolicy,
    pub created_at: DateTime<Utc>,
    /// When the job became due; enqueue→start latency is measured from here.
    pub run_at: DateTime<Utc>,
    pub pipeline: Option<PipelineId>,
    pub step: Option<String>,
}

impl ClaimedJob {
    pub fn lease(&self) -> Lease {
        Lease {
            job: self.id,
            token: self.lease_token,
        }
    }
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    /// Failed; run again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed terminally.
    Dead {
        error: String,
    },
    /// Stopped because it was cancelled (or superseded).
    Cancelled {
        reason: String,
    },
    /// Handed back unfinished (graceful shutdown ran out of time): available again at once, and
    /// the attempt does not count.
    Released,
}

impl Outcome {
    pub fn state(&self) -> JobState {
        match self {
            Outcome::Completed => JobState::Completed,
            Outcome::Retry { .. } => JobState::Scheduled,
            Outcome::Dead { .. } => JobState::Dead,
            Outcome::Cancelled { .. } => JobState::Cancelled,
            Outcome::Released => JobState::Available,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Completed | Outcome::Released => None,
            Outcome::Retry { error, .. } | Outcome::Dead { error } => Some(error),
            Outcome::Cancelled { reason } => Some(reason),
        }
    }

    pub fn run_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Outcome::Retry { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// The outcome of a failed attempt under `policy`: retry with backoff while attempts remain.
    pub fn failure(attempt: u32, policy: &JobPolicy, error: String, now: DateTime<Utc>) -> Self {
        if attempt >= policy.max_attempts {
            Outcome::Dead { error }
        } else {
            Outcome::retry_after(now, policy.backoff.delay(attempt), error)
        }
    }

    /// A retry `after` from `now`; absurd delays are capped at 30 days instead of overflowing.
    pub fn retry_after(now: DateTime<Utc>, after: Duration, error: String) -> Self {
        let after = chrono::Duration::from_std(after.min(Duration::from_secs(30 * 86_400))).unwrap_or_default();
        Outcome::Retry {
            at: now.checked_add_signed(after).unwrap_or(now),
            error,
        }
    }
}

/// A worker's report of one finished attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub lease: Lease,
    /// The pipeline the job is a step of, copied from [`ClaimedJob::pipeline`].
    pub pipeline: Option<PipelineId>,
    pub outcome: Outcome,
}

impl Ack {
    pub fn new(job: &ClaimedJob, outcome: Outcome) -> Self {
        Self {
            lease: job.lease(),
            pipeline: job.pipeline,
            outcome,
        }
    }
}

/// Everything stored about a job, for operators and tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub project: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempt: u32,
    pub policy: JobPolicy,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub cancel_requested: bool,
    pub unique_key: Option<String>,
    pub pipeline: Option<PipelineId>,
    pub step: Option<String>,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(200), Duration::from_secs(1));
        for attempt in 1..10 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
    }

    #[test]
    fn failure_is_dead_when_attempts_run_out() {
        let policy = JobPolicy {
            max_attempts: 2,
            ..JobPolicy::default()
        };
        let now = Utc::now();
        assert!(matches!(
            Outcome::failure(1, &policy, "x".into(), now),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            Outcome::failure(2, &policy, "x".into(), now),
            Outcome::Dead { .. }
        ));
    }

    #[test]
    fn only_jobs_created_in_a_trace_carry_it() {
        // Outside any trace (the load tests, the scheduler) the payload is left as it is.
        let plain = NewJob::new("k", "p", serde_json::json!({"a": 1}));
        assert_eq!(plain.payload, serde_json::json!({"a": 1}));
        let ctx = crate::trace::TraceContext::new_root();
        let (traced, scalar) = crate::trace::sync_scope(ctx, || {
            (
                NewJob::new("k", "p", serde_json::json!({"a": 1})),
                NewJob::new("k", "p", serde_json::json!([1])),
            )
        });
        assert_eq!(traced.payload, serde_json::json!({"a": 1, "_trace": ctx.to_string()}));
        assert_eq!(scalar.payload, serde_json::json!([1]), "only objects are stamped");
    }

    #[test]
    fn validation_names_the_field() {
        let mut job = NewJob::new("build", "", serde_json::json!({}));
        let err = job.validate().unwrap_err().to_string();
        assert!(err.contains("project"), "{err}");
        job.project = "p".into();
        job.policy.max_attempts = 0;
        assert!(job.validate().unwrap_err().to_string().contains("max_attempts"));
    }
}
