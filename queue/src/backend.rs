//! The storage contract every queue backend implements, and the claim-time policy (fair share,
//! concurrency caps, rate limits) they share.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::job::{Ack, ClaimedJob, Enqueued, JobId, JobRecord, JobState, Lease, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord};

/// What a worker asks for when it claims.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Unique per worker process run; stored on each claimed job.
    pub worker: String,
    /// The kinds this worker has handlers for.
    pub kinds: Vec<String>,
    /// At most this many jobs.
    pub limit: usize,
    /// How long the claimed jobs stay leased without a heartbeat.
    pub lease: Duration,
}

/// What a heartbeat learns about the leases it renewed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Leases this worker no longer holds (expired and rescued, or finished elsewhere): stop them.
    pub lost: Vec<JobId>,
    /// Jobs an operator (or a superseding pipeline) asked to cancel: stop them and ack `Cancelled`.
    pub cancel: Vec<JobId>,
}

/// Per-project limits enforced when jobs are claimed, across all worker processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLimits {
    /// Never more than this many of the project's jobs running at once.
    pub max_running: Option<u32>,
    /// Jobs started per minute (token bucket; bursts up to one minute's worth).
    pub jobs_per_minute: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// It had not started; it will not run.
    Cancelled,
    /// It is running; its worker will stop it at the next heartbeat.
    Requested,
    /// It had already finished in this state.
    AlreadyFinished(JobState),
}

/// Jobs whose lease expired, as the reaper handled them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescueReport {
    pub retried: Vec<JobId>,
    pub dead: Vec<JobId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthRow {
    pub kind: String,
    pub project: String,
    pub state: JobState,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Counts of unfinished and dead jobs by kind, project and state.
    pub depth: Vec<DepthRow>,
    /// Per kind: seconds since the oldest `available` job became due.
    pub oldest_available_seconds: Vec<(String, f64)>,
}

/// Which jobs [`Backend::list_jobs`] returns (operators' views: dead jobs, recent throughput).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Any of these states; empty: every state.
    pub states: Vec<JobState>,
    pub kind: Option<String>,
    pub project: Option<String>,
    /// Only jobs that finished after this instant.
    pub finished_after: Option<DateTime<Utc>>,
    /// At most this many (newest first).
    pub limit: usize,
}

impl JobFilter {
    pub fn matches(&self, job: &JobRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&job.state))
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.project.as_ref().is_none_or(|p| *p == job.project)
            && self
                .finished_after
                .is_none_or(|after| job.finished_at.is_some_and(|at| at > after))
    }

    /// The states as SQL text values (every backend stores them by name).
    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|s| s.as_str()).collect()
    }
}

/// A queue storage backend. Implementations: PostgreSQL, SQLite, Redis.
///
/// Semantics every backend guarantees (and `tests/behaviour.rs` checks on all three):
/// - a job is claimed by at most one live lease at a time; a stale lease cannot finish it;
/// - claims honour priority, `run_at`, per-project caps and rate limits, and share a claim
///   fairly between projects with waiting work;
/// - a pipeline step becomes available only when all the steps it needs have completed.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `postgres`, `sqlite` or `redis`.
    fn name(&self) -> &'static str;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;

    /// Inserts jobs in bulk (one round trip per chunk). Unique keys that already exist return the
    /// existing job with `duplicate: true`.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Inserts a pipeline run and its steps atomically, superseding older runs with the same key.
    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued>;

    /// Leases up to `limit` due jobs.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>>;

    /// Extends the leases this worker still holds; reports lost leases and cancel requests.
    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply>;

    /// Records finished attempts in one batch. Acks for leases no longer held are ignored.
    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()>;

    /// Cancels a job: at once if it has not started, through its worker if it is running.
    async fn cancel(&self, id: JobId) -> Result<CancelOutcome>;

    /// Makes a dead or cancelled job available again with a fresh set of attempts.
    async fn retry(&self, id: JobId) -> Result<()>;

    /// Re-queues (or dead-letters) running jobs whose lease expired: their worker died.
    async fn rescue_expired(&self) -> Result<RescueReport>;

    /// Deletes jobs that finished before `before`, and pipelines left without jobs.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64>;

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// Jobs matching `filter`, newest (highest id) first. An operator's query, not a hot path.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>>;

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>>;

    async fn stats(&self) -> Result<QueueStats>;

    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()>;

    /// Returns when new work may be available (a notification), or after `timeout`.
    async fn wait_for_work(&self, timeout: Duration);

    /// Makes every pipeline id handed out from now on greater than `pipeline`, and every job id
    /// greater than `job`; never lowers them. A queue that can lose its data while the caller
    /// keeps ids (Redis restarted without persistence, while the control plane still names runs
    /// and jobs by id) implements it; a queue whose sequences live with the caller's data (the
    /// SQL backends, in the control plane's own database) has nothing to do.
    async fn ensure_ids_above(&self, pipeline: PipelineId, job: JobId) -> Result<()> {
        let _ = (pipeline, job);
        Ok(())
    }
}

/// Wakes a waiting claim loop when work may have arrived.
///
/// One notification wakes one waiter, or — if none is waiting because the loop is busy claiming —
/// is kept for its next wait, so nothing is missed and nothing is claimed for twice.
#[derive(Debug, Default)]
pub(crate) struct Wakeup(tokio::sync::Notify);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.notified()).await;
    }
}

/// Most projects considered in one claim; more are served in rotation over later claims.
pub(crate) const MAX_PROJECTS_PER_CLAIM: usize = 256;

/// A project with due work, and how many more jobs it may start now (`None`: no limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub project: String,
    pub room: Option<u32>,
}

/// Splits `limit` claim slots between projects by water-filling: every project gets an equal
/// share, capped by its room; what a capped project cannot use goes to the others.
/// `rotation` picks which projects come first when there are more projects than slots.
pub(crate) fn fair_quotas(candidates: &[Candidate], limit: usize, rotation: usize) -> Vec<(String, u32)> {
    let mut open: Vec<&Candidate> = candidates.iter().filter(|c| c.room != Some(0)).collect();
    if open.is_empty() || limit == 0 {
        return Vec::new();
    }
    let start = rotation % open.len();
    open.rotate_left(start);
    open.truncate(limit);
    let mut quotas = vec![0u32; open.len()];
    let mut budget = limit as u32;
    loop {
        let hungry: Vec<usize> = (0..open.len())
            .filter(|&i| open[i].room.is_none_or(|room| quotas[i] < room))
            .collect();
        if hungry.is_empty() || budget == 0 {
            break;
        }
        let share = (budget / hungry.len() as u32).max(1);
        for i in hungry {
            if budget == 0 {
                break;
            }
            let room = open[i].room.map_or(u32::MAX, |room| room - quotas[i]);
            let grant = share.min(room).min(budget);
            quotas[i] += grant;
            budget -= grant;
        }
    }
    open.iter()
        .zip(quotas)
        .filter(|(_, q)| *q > 0)
        .map(|(c, q)| (c.project.clone(), q))
        .collect()
}

/// A token bucket for `jobs_per_minute`, refilled continuously, holding at most one minute's worth.
pub(crate) fn refill_tokens(tokens: f64, refilled_at: DateTime<Utc>, now: DateTime<Utc>, per_minute: u32) -> f64 {
    let elapsed = (now - refilled_at).num_milliseconds().max(0) as f64 / 1000.0;
    (tokens + elapsed * per_minute as f64 / 60.0).min(per_minute as f64)
}

/// How many more jobs a project may start now under its limits.
pub(crate) fn room(limits: &ProjectLimits, running: u64, tokens: f64) -> Option<u32> {
    let cap = limits
        .max_running
        .map(|max| (max as u64).saturating_sub(running) as u32);
    let rate = limits.jobs_per_minute.map(|_| tokens.max(0.0).floor() as u32);
    match (cap, rate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(project: &str, room: Option<u32>) -> Candidate {
        Candidate {
            project: project.into(),
            room,
        }
    }

    #[test]
    fn quotas_split_evenly_between_unlimited_projects() {
        let q = fair_quotas(&[c("a", None), c("b", None)], 32, 0);
        assert_eq!(q, vec![("a".into(), 16), ("b".into(), 16)]);
    }

    #[test]
    fn quotas_give_a_capped_projects_leftover_to_others() {
        let q = fair_quotas(&[c("a", Some(2)), c("b", None), c("c", Some(0))], 10, 0);
        assert_eq!(q, vec![("a".into(), 2), ("b".into(), 8)]);
    }

    #[test]
    fn more_projects_than_slots_rotate() {
        let cands: Vec<_> = (0..10).map(|i| c(&format!("p{i}"), None)).collect();
        let first = fair_quotas(&cands, 3, 0);
        let second = fair_quotas(&cands, 3, 3);
        assert_eq!(first.iter().map(|q| q.1).sum::<u32>(), 3);
        assert_eq!(first[0].0, "p0");
        assert_eq!(second[0].0, "p3");
    }

    #[test]
    fn room_is_the_tighter_of_cap_and_rate() {
        let limits = ProjectLimits {
            max_running: Some(5),
            jobs_per_minute: Some(60),
        };
        assert_eq!(room(&limits, 3, 10.7), Some(2));
        assert_eq!(room(&limits, 0, 1.2), Some(1));
        assert_eq!(room(&ProjectLimits::default(), 100, 0.0), None);
    }

    #[test]
    fn tokens_refill_up_to_one_minute() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(30);
        assert!((refill_tokens(0.0, t0, t1, 60) - 30.0).abs() < 0.01);
        assert_eq!(refill_tokens(50.0, t0, t1 + chrono::Duration::hours(1), 60), 60.0);
    }
}
