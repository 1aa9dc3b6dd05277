//! Instruments: a backend wrapper that times claims and acknowledgements, the benchmark handlers
//! that count completions and enqueue→start latency, percentiles and process usage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use enclii_queue::{
    Ack, Backend, CancelOutcome, ClaimRequest, ClaimedJob, Enqueued, JobId, JobPolicy, JobRecord, JobState, Lease,
    NewJob, Outcome, PipelineId, ProjectLimits, QueueStats, RescueReport,
};
use enclii_queue::{HeartbeatReply, NewPipeline, PipelineEnqueued, PipelineRecord};
use enclii_worker::{Handler, JobContext, JobError};
use serde::{Deserialize, Serialize};

use crate::store::Store;

pub const NOOP: &str = "bench.noop";
pub const SLEEP: &str = "bench.sleep";

pub fn policy() -> JobPolicy {
    JobPolicy {
        max_attempts: 5,
        timeout: Duration::from_secs(60),
        ..JobPolicy::default()
    }
}

/// What every benchmark job carries.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Payload {
    /// Position in the run (0..n), for lost/duplicate accounting.
    pub i: usize,
    /// Wall time just before the enqueue call, µs since the epoch.
    pub t: i64,
    /// How long `bench.sleep` sleeps.
    #[serde(default)]
    pub ms: u64,
}

pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

pub fn job(kind: &str, project: &str, payload: Payload) -> NewJob {
    NewJob::new(
        kind,
        project,
        serde_json::to_value(payload).expect("payload serializes"),
    )
    .with_policy(policy())
}

/// Claim and acknowledgement counters, as seen between the worker and its backend.
#[derive(Default)]
pub struct Meter {
    pub claims: AtomicU64,
    pub empty_claims: AtomicU64,
    pub claimed: AtomicU64,
    pub claim_ns: AtomicU64,
    pub acks: AtomicU64,
    pub acked: AtomicU64,
    pub acked_completed: AtomicU64,
    pub ack_ns: AtomicU64,
    /// Offsets from `Meter::base`, ns; `u64::MAX` = never.
    first_claim_ns: AtomicU64,
    last_ack_ns: AtomicU64,
    base: Option<Instant>,
}

impl Meter {
    pub fn new(base: Instant) -> Arc<Meter> {
        Arc::new(Meter {
            first_claim_ns: AtomicU64::new(u64::MAX),
            base: Some(base),
            ..Meter::default()
        })
    }

    fn since_base(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base.expect("base set")).as_nanos() as u64
    }

    /// When the first claim that returned jobs was sent.
    pub fn first_claim(&self) -> Option<Duration> {
        match self.first_claim_ns.load(Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// When the last acknowledgement carrying a completion committed.
    pub fn last_ack(&self) -> Option<Duration> {
        match self.last_ack_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub fn summary(&self) -> serde_json::Value {
        let claims = self.claims.load(Ordering::Relaxed);
        let claimed = self.claimed.load(Ordering::Relaxed);
        let acks = self.acks.load(Ordering::Relaxed);
        let acked = self.acked.load(Ordering::Relaxed);
        let avg = |total_ns: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                round3(total_ns as f64 / n as f64 / 1e6)
            }
        };
        serde_json::json!({
            "claim_calls": claims,
            "claim_calls_empty": self.empty_claims.load(Ordering::Relaxed),
            "claim_batch_avg": if claims == 0 { 0.0 } else { round3(claimed as f64 / claims as f64) },
            "claim_call_avg_ms": avg(self.claim_ns.load(Ordering::Relaxed), claims),
            "claim_busy_s": round3(self.claim_ns.load(Ordering::Relaxed) as f64 / 1e9),
            "ack_calls": acks,
            "ack_batch_avg": if acks == 0 { 0.0 } else { round3(acked as f64 / acks as f64) },
            "ack_call_avg_ms": avg(self.ack_ns.load(Ordering::Relaxed), acks),
            "ack_busy_s": round3(self.ack_ns.load(Ordering::Relaxed) as f64 / 1e9),
        })
    }
}

/// Delegates to a backend, timing `claim` and `acknowledge`.
pub struct Metered {
    pub inner: Arc<dyn Backend>,
    pub meter: Arc<Meter>,
}

#[async_trait]
impl Backend for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> enclii_queue::Result<()> {
        self.inner.ping().await
    }
    async fn enqueue(&self, jobs: Vec<NewJob>) -> enclii_queue::Result<Vec<Enqueued>> {
        self.inner.enqueue(jobs).await
    }
    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> enclii_queue::Result<PipelineEnqueued> {
        self.inner.enqueue_pipeline(pipeline).await
    }
    async fn claim(&self, request: &ClaimRequest) -> enclii_queue::Result<Vec<ClaimedJob>> {
        let started = Instant::now();
        let out = self.inner.claim(request).await;
        let m = &self.meter;
        m.claims.fetch_add(1, Ordering::Relaxed);
        m.claim_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match &out {
            Ok(jobs) if !jobs.is_empty() => {
                m.claimed.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                let _ = m.first_claim_ns.compare_exchange(
                    u64::MAX,
                    m.since_base(started),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {
                m.empty_claims.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }
    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> enclii_queue::Result<HeartbeatReply> {
        self.inner.heartbeat(worker, leases, lease).await
    }
    async fn acknowledge(&self, acks: Vec<Ack>) -> enclii_queue::Result<()> {
        let n = acks.len() as u64;
        let completed = acks.iter().filter(|a| a.outcome == Outcome::Completed).count() as u64;
        let started = Instant::now();
        let out = self.inner.acknowledge(acks).await;
        let m = &self.meter;
        m.acks.fetch_add(1, Ordering::Relaxed);
        m.ack_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if out.is_ok() {
            m.acked.fetch_add(n, Ordering::Relaxed);
            if completed > 0 {
                m.last_ack_ns.fetch_max(m.since_base(Instant::now()), Ordering::Relaxed);
                m.acked_completed.fetch_add(completed, Ordering::Relaxed);
            }
        }
        out
    }
    async fn cancel(&self, id: JobId) -> enclii_queue::Result<CancelOutcome> {
        self.inner.cancel(id).await
    }
    async fn retry(&self, id: JobId) -> enclii_queue::Result<()> {
        self.inner.retry(id).await
    }
    async fn rescue_expired(&self) -> enclii_queue::Result<RescueReport> {
        self.inner.rescue_expired().await
    }
    async fn prune(&self, before: DateTime<Utc>) -> enclii_queue::Result<u64> {
        self.inner.prune(before).await
    }
    async fn job(&self, id: JobId) -> enclii_queue::Result<Option<JobRecord>> {
        self.inner.job(id).await
    }
    async fn list_jobs(&self, filter: &enclii_queue::JobFilter) -> enclii_queue::Result<Vec<JobRecord>> {
        self.inner.list_jobs(filter).await
    }
    async fn pipeline(&self, id: PipelineId) -> enclii_queue::Result<Option<PipelineRecord>> {
        self.inner.pipeline(id).await
    }
    async fn stats(&self) -> enclii_queue::Result<QueueStats> {
        self.inner.stats().await
    }
    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> enclii_queue::Result<()> {
        self.inner.set_project_limits(project, limits).await
    }
    async fn wait_for_work(&self, timeout: Duration) {
        self.inner.wait_for_work(timeout).await
    }
}

/// Jobs in the given states, from `stats()`.
pub async fn count_in(backend: &dyn Backend, states: &[JobState]) -> enclii_queue::Result<u64> {
    Ok(backend
        .stats()
        .await?
        .depth
        .iter()
        .filter(|row| states.contains(&row.state))
        .map(|row| row.count)
        .sum())
}

pub const UNFINISHED: [JobState; 4] = [
    JobState::Pending,
    JobState::Scheduled,
    JobState::Available,
    JobState::Running,
];

/// What the in-process handlers observed.
pub struct RunState {
    pub base: Instant,
    /// Handler completions per job position.
    completions: Vec<AtomicU32>,
    /// Enqueue→start latency of each job's first start, µs; `i64::MIN` = never started.
    latency_us: Vec<AtomicI64>,
    /// Handler completions in all.
    pub done: AtomicUsize,
    pub all_done: tokio::sync::Notify,
    /// Per project: offset from `base` of its last completion, ns.
    last_done: Mutex<HashMap<String, u64>>,
}

impl RunState {
    pub fn new(n: usize, base: Instant) -> Arc<RunState> {
        Arc::new(RunState {
            base,
            completions: (0..n).map(|_| AtomicU32::new(0)).collect(),
            latency_us: (0..n).map(|_| AtomicI64::new(i64::MIN)).collect(),
            done: AtomicUsize::new(0),
            all_done: tokio::sync::Notify::new(),
            last_done: Mutex::new(HashMap::new()),
        })
    }

    pub fn n(&self) -> usize {
        self.completions.len()
    }

    fn started(&self, p: &Payload) {
        if let Some(slot) = self.latency_us.get(p.i) {
            let _ = slot.compare_exchange(i64::MIN, now_us() - p.t, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn finished(&self, p: &Payload, project: &str) {
        if let Some(c) = self.completions.get(p.i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let at = self.base.elapsed().as_nanos() as u64;
        {
            let mut last = self.last_done.lock().expect("last_done");
            match last.get_mut(project) {
                Some(v) => *v = (*v).max(at),
                None => {
                    last.insert(project.to_string(), at);
                }
            }
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 >= self.n() {
            self.all_done.notify_waiters();
            self.all_done.notify_one();
        }
    }

    /// Waits until `n` handler completions, or `deadline` passes.
    pub async fn wait_all(&self, deadline: Instant) -> bool {
        loop {
            if self.done.load(Ordering::Acquire) >= self.n() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), self.all_done.notified()).await;
        }
    }

    /// (lost, duplicated): jobs never completed, jobs completed more than once.
    pub fn lost_duplicated(&self) -> (usize, usize) {
        let mut lost = 0;
        let mut dup = 0;
        for c in &self.completions {
            match c.load(Ordering::Relaxed) {
                0 => lost += 1,
                1 => {}
                _ => dup += 1,
            }
        }
        (lost, dup)
    }

    pub fn latencies_ms(&self) -> Vec<f64> {
        self.latency_us
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != i64::MIN)
            .map(|l| l.max(0) as f64 / 1000.0)
            .collect()
    }

    /// Per project: seconds from `base` to its last completion.
    pub fn project_done_s(&self) -> HashMap<String, f64> {
        self.last_done
            .lock()
            .expect("last_done")
            .iter()
            .map(|(p, ns)| (p.clone(), round3(*ns as f64 / 1e9)))
            .collect()
    }
}

/// `bench.noop` and `bench.sleep`: record into the in-process state and/or the durable store.
#[derive(Clone)]
pub struct Bench {
    pub state: Option<Arc<RunState>>,
    pub store: Option<Store>,
    pub sleep: bool,
}

#[async_trait]
impl Handler for Bench {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let started_us = now_us();
        let p: Payload = ctx.payload()?;
        if let Some(state) = &self.state {
            state.started(&p);
        }
        if self.sleep && p.ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
        }
        if let Some(store) = &self.store {
            store
                .record(ctx.job.id, ctx.job.attempt, started_us - p.t, now_us())
                .await
                .map_err(JobError::retry)?;
        }
        if let Some(state) = &self.state {
            state.finished(&p, &ctx.job.project);
        }
        Ok(())
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Nearest-rank percentiles of `values` (ms): p50, p95, p99, max.
pub fn percentiles(mut values: Vec<f64>) -> [Option<f64>; 4] {
    if values.is_empty() {
        return [None; 4];
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        Some(round3(values[rank - 1]))
    };
    [at(0.50), at(0.95), at(0.99), Some(round3(values[values.len() - 1]))]
}

/// This process's CPU seconds (user + system) and peak RSS in MiB, from /proc.
pub fn process_usage() -> (Option<f64>, Option<f64>) {
    let rss = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(round3(kb / 1024.0))
    });
    (process_cpu_s("self"), rss)
}

/// CPU seconds (user + system) of process `pid` (or `self`) so far, from /proc.
pub fn process_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(round3((utime + stime) / 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(v), [Some(50.0), Some(95.0), Some(99.0), Some(100.0)]);
        assert_eq!(percentiles(vec![]), [None; 4]);
        assert_eq!(percentiles(vec![3.0]), [Some(3.0); 4]);
    }
}
