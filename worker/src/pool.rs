//! The worker pool runtime: one claim loop, one heartbeat loop, one ack flusher, one lease reaper,
//! and a task per job.
//!
//! Life of a job in this process: claimed in a batch (up to `concurrency + prefetch` outstanding)
//! → waits for an execution slot → runs under its kind's timeout → its outcome is queued for the
//! ack flusher, which acknowledges everything finished since its last flush in one call. The
//! job's lease is renewed by the heartbeat loop from claim until its ack commits, so a finished
//! but not yet acknowledged job is never rescued and run twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use enclii_queue::trace;
use enclii_queue::{Ack, Backend, ClaimRequest, ClaimedJob, JobId, Lease, Outcome};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::handler::{JobContext, JobError, Registry};

/// Tuning of one worker process. Defaults suit build and deploy work; the load test raises
/// `concurrency`.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Handlers running at once.
    pub concurrency: usize,
    /// At most this many jobs claimed ahead of free execution slots. The pool prefetches only as
    /// many as finish during one claim round trip (measured), so long jobs are never hoarded by
    /// one worker while others idle; short jobs get deep batches.
    pub prefetch: usize,
    /// How long a claimed job stays leased without a heartbeat. A crashed worker's jobs run
    /// again after at most this long (plus one `rescue_every`).
    pub lease: Duration,
    pub heartbeat_every: Duration,
    /// Fallback poll when no notification arrives (notifications can be lost, e.g. behind PgBouncer).
    pub poll_every: Duration,
    /// How often this process looks for expired leases of crashed workers.
    pub rescue_every: Duration,
    /// On shutdown, how long in-flight jobs may run on before they are stopped and handed back.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            prefetch: 64,
            lease: Duration::from_secs(8),
            heartbeat_every: Duration::from_secs(2),
            poll_every: Duration::from_secs(1),
            rescue_every: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// The defaults for `concurrency` handlers, prefetching at most four times that many (the
    /// adaptive prefetch reaches that cap only for jobs much shorter than a claim round trip).
    pub fn with_concurrency(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            concurrency,
            prefetch: 4 * concurrency,
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker has no handlers registered, so it could never claim a job")]
    NoHandlers,
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

/// Why a running job was told to stop. The first reason wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
    Shutdown,
}

/// How the pool steers one claimed job's task.
#[derive(Default)]
struct Control {
    stop: CancellationToken,
    /// Why it was stopped; the first reason wins.
    reason: OnceLock<StopReason>,
    /// Whether its handler has started (it may be waiting for an execution slot).
    started: AtomicBool,
}

impl Control {
    fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }
}

struct Entry {
    lease: Lease,
    control: Arc<Control>,
}

/// Moving averages of job run time and claim round trip, which size the prefetch.
#[derive(Default)]
struct Pace {
    job_micros: AtomicU64,
    claim_micros: AtomicU64,
}

impl Pace {
    fn record(average: &AtomicU64, sample: Duration) {
        let sample = (sample.as_micros() as u64).max(1);
        let old = average.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        average.store(new, Ordering::Relaxed);
    }

    /// Jobs worth claiming ahead: those that would finish during one claim round trip.
    /// Nothing until a job has finished (an unknown job may be a long build).
    fn prefetch(&self, concurrency: usize, max: usize) -> usize {
        let job = self.job_micros.load(Ordering::Relaxed);
        if job == 0 {
            return 0;
        }
        let claim = self.claim_micros.load(Ordering::Relaxed).max(1);
        ((concurrency as u64 * claim).div_ceil(job) as usize).min(max)
    }
}

struct Shared {
    backend: Arc<dyn Backend>,
    registry: Registry,
    config: WorkerConfig,
    id: String,
    /// Jobs claimed by this process and not yet acknowledged.
    running: Mutex<HashMap<JobId, Entry>>,
    exec: Arc<Semaphore>,
    acks: mpsc::UnboundedSender<Ack>,
    pace: Pace,
    /// Signalled whenever a job gives back its claim slot.
    slot_freed: Notify,
}

impl Shared {
    fn stop_job(&self, id: JobId, reason: StopReason) {
        if let Some(entry) = self.running.lock().expect("running map").get(&id) {
            entry.control.stop(reason);
        }
    }

    fn stop_all(&self, reason: StopReason) {
        for entry in self.running.lock().expect("running map").values() {
            entry.control.stop(reason);
        }
    }

    /// Stops the jobs still waiting for an execution slot (prefetched ones).
    fn stop_unstarted(&self, reason: StopReason) {
        for entry in self.running.lock().expect("running map").values() {
            if !entry.control.started.load(Ordering::SeqCst) {
                entry.control.stop(reason);
            }
        }
    }

    /// Tracks a new claim. A previous claim of the same job still tracked here lost its lease
    /// (it was rescued and claimed again): stop it.
    fn track(&self, lease: Lease) -> Arc<Control> {
        let control = Arc::new(Control::default());
        let entry = Entry {
            lease,
            control: control.clone(),
        };
        if let Some(old) = self.running.lock().expect("running map").insert(lease.job, entry) {
            old.control.stop(StopReason::LeaseLost);
        }
        control
    }

    /// Stops tracking a claim — only that claim, never a newer one of the same job.
    fn untrack(&self, lease: Lease) {
        let mut running = self.running.lock().expect("running map");
        if running.get(&lease.job).is_some_and(|e| e.lease == lease) {
            running.remove(&lease.job);
        }
    }
}

/// A worker process's pool. `run` returns after a graceful shutdown.
pub struct Worker {
    backend: Arc<dyn Backend>,
    registry: Registry,
    config: WorkerConfig,
    id: String,
    host: String,
}

impl Worker {
    pub fn new(backend: Arc<dyn Backend>, registry: Registry, config: WorkerConfig) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        let id = format!("{host}-{}-{:08x}", std::process::id(), rand::rng().random::<u32>());
        Self {
            backend,
            registry,
            config,
            id,
            host,
        }
    }

    /// The unique name this worker stores on the jobs it claims.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The machine (or pod) it runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The job kinds it has handlers for.
    pub fn kinds(&self) -> Vec<String> {
        self.registry.kinds()
    }

    pub fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    /// Runs until `shutdown` fires, then stops claiming, lets in-flight jobs finish within
    /// `shutdown_grace`, hands back the rest, and flushes acknowledgements.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let kinds = self.registry.kinds();
        if kinds.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        if self.config.concurrency == 0 || self.config.heartbeat_every >= self.config.lease {
            return Err(WorkerError::Config(
                "concurrency must be at least 1 and heartbeat_every shorter than lease".into(),
            ));
        }
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            exec: Arc::new(Semaphore::new(self.config.concurrency)),
            backend: self.backend,
            registry: self.registry,
            config: self.config,
            id: self.id,
            running: Mutex::new(HashMap::new()),
            acks: ack_tx,
            pace: Pace::default(),
            slot_freed: Notify::new(),
        });
        info!(worker = %shared.id, backend = shared.backend.name(), ?kinds, "worker started");
        let jobs = TaskTracker::new();
        let flushed = CancellationToken::new();
        let heartbeats_done = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), heartbeats_done.clone()));
        let reaper = tokio::spawn(rescue_loop(shared.clone(), shutdown.clone()));
        let mut flusher = tokio::spawn(ack_loop(shared.clone(), ack_rx, flushed.clone()));

        claim_loop(&shared, &kinds, &jobs, &shutdown).await;

        info!(worker = %shared.id, in_flight = jobs.len(), "shutting down: no more claims");
        // Prefetched jobs that have not started go back at once; running ones get the grace.
        shared.stop_unstarted(StopReason::Shutdown);
        jobs.close();
        if tokio::time::timeout(shared.config.shutdown_grace, jobs.wait())
            .await
            .is_err()
        {
            warn!(worker = %shared.id, handed_back = jobs.len(), "shutdown grace ran out; handing unfinished jobs back");
            shared.stop_all(StopReason::Shutdown);
            jobs.wait().await;
        }
        // Heartbeats go on until the last acknowledgement is written (or cannot be, in time).
        flushed.cancel();
        if tokio::time::timeout(shared.config.lease, &mut flusher).await.is_err() {
            flusher.abort();
            warn!(
                worker = %shared.id,
                "could not acknowledge finished jobs before exiting; they run again when their leases expire"
            );
        }
        heartbeats_done.cancel();
        let _ = heartbeats.await;
        let _ = reaper.await;
        info!(worker = %shared.id, "worker stopped");
        Ok(())
    }
}

async fn claim_loop(shared: &Arc<Shared>, kinds: &[String], jobs: &TaskTracker, shutdown: &CancellationToken) {
    let capacity = shared.config.concurrency + shared.config.prefetch;
    let slots = Arc::new(Semaphore::new(capacity));
    let mut failures = 0u32;
    loop {
        // Jobs claimed and not yet finished may not exceed concurrency + the current prefetch.
        let mut permits = Vec::new();
        loop {
            let allowed =
                shared.config.concurrency + shared.pace.prefetch(shared.config.concurrency, shared.config.prefetch);
            let outstanding = capacity - slots.available_permits();
            if outstanding < allowed {
                while permits.len() < allowed - outstanding {
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => permits.push(permit),
                        Err(_) => break,
                    }
                }
                break;
            }
            tokio::select! {
                _ = shared.slot_freed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let want = permits.len();
        let request = ClaimRequest {
            worker: shared.id.clone(),
            kinds: kinds.to_vec(),
            limit: want,
            lease: shared.config.lease,
        };
        let started = Instant::now();
        match shared.backend.claim(&request).await {
            Ok(claimed) => {
                failures = 0;
                Pace::record(&shared.pace.claim_micros, started.elapsed());
                metrics::histogram!("enclii_queue_claim_query_seconds").record(started.elapsed().as_secs_f64());
                let got = claimed.len();
                for (job, slot) in claimed.into_iter().zip(permits.drain(..)) {
                    let control = shared.track(job.lease());
                    let span = info_span!(
                        "job",
                        trace_id = tracing::field::Empty,
                        job_id = job.id,
                        kind = %job.kind,
                        project = %job.project,
                        attempt = job.attempt,
                        pipeline = job.pipeline,
                        step = job.step.as_deref(),
                    );
                    // The job's span continues the trace it was enqueued in (a new one without).
                    let trace = trace::attach(&span, trace::from_payload(&job.payload));
                    let shared = shared.clone();
                    jobs.spawn(
                        trace::scope(trace, async move {
                            execute(&shared, job, control).await;
                            drop(slot);
                            shared.slot_freed.notify_one();
                        })
                        .instrument(span),
                    );
                }
                drop(permits);
                // Let the jobs just spawned start (and short ones finish) before claiming again,
                // so that the next claim sees the slots they free and batches stay large.
                tokio::task::yield_now().await;
                // A partial batch may only mean fair-share quotas; wait only when nothing came.
                if got == 0 {
                    tokio::select! {
                        _ = shared.backend.wait_for_work(shared.config.poll_every) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                drop(permits);
                failures += 1;
                let pause = backoff_pause(failures);
                warn!(error = %e, retry_in = ?pause, "claim failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Pause after `failures` consecutive backend errors: 100 ms doubling to 5 s, with jitter.
fn backoff_pause(failures: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(5));
    ceiling / 2 + Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64 / 2))
}

enum Ended {
    Finished(Result<Result<(), JobError>, tokio::task::JoinError>),
    TimedOut,
    Stopped,
}

async fn execute(shared: &Shared, job: ClaimedJob, control: Arc<Control>) {
    let stop = &control.stop;
    let kind = job.kind.clone();
    let lease = job.lease();
    let pipeline = job.pipeline;
    let exec = tokio::select! {
        permit = shared.exec.clone().acquire_owned() => Some(permit.expect("exec never closes")),
        _ = stop.cancelled() => None,
    };
    control.started.store(exec.is_some(), Ordering::SeqCst);
    let waited = Utc::now() - job.run_at;
    metrics::counter!("enclii_queue_jobs_claimed_total", "kind" => kind.clone()).increment(1);
    metrics::histogram!("enclii_queue_start_latency_seconds", "kind" => kind.clone())
        .record(waited.num_microseconds().unwrap_or(0) as f64 / 1e6);
    let started = Instant::now();
    let attempt = job.attempt;
    let policy = job.policy;
    let ended = match (exec.is_some(), shared.registry.get(&job.kind)) {
        (false, _) => Ended::Stopped,
        (true, None) => Ended::Finished(Ok(Err(JobError::Abort(format!(
            "no handler for kind `{kind}` in this worker"
        ))))),
        (true, Some(handler)) => {
            let cancel = stop.child_token();
            let ctx = JobContext {
                job,
                cancel: cancel.clone(),
            };
            // A task of its own, so that a panicking handler fails its job, not the worker.
            // The trace follows the handler into its task, so jobs it enqueues join it.
            let run = async move { handler.run(ctx).await };
            let mut run = match trace::current() {
                Some(trace) => tokio::spawn(trace::scope(trace, run).in_current_span()),
                None => tokio::spawn(run.in_current_span()),
            };
            let ended = tokio::select! {
                result = &mut run => Ended::Finished(result),
                _ = tokio::time::sleep(policy.timeout) => Ended::TimedOut,
                _ = stop.cancelled() => Ended::Stopped,
            };
            if !matches!(ended, Ended::Finished(_)) {
                cancel.cancel();
                run.abort();
            }
            ended
        }
    };
    drop(exec);
    if matches!(ended, Ended::Finished(_)) {
        Pace::record(&shared.pace.job_micros, started.elapsed());
    }
    let now = Utc::now();
    let outcome = match ended {
        Ended::Finished(Ok(Ok(()))) => Some(Outcome::Completed),
        Ended::Finished(Ok(Err(JobError::Retry(message)))) => Some(Outcome::failure(attempt, &policy, message, now)),
        Ended::Finished(Ok(Err(JobError::RetryAfter { after, message }))) => Some(if attempt >= policy.max_attempts {
            Outcome::Dead { error: message }
        } else {
            Outcome::retry_after(now, after, message)
        }),
        Ended::Finished(Ok(Err(JobError::Abort(message)))) => Some(Outcome::Dead { error: message }),
        Ended::Finished(Err(join)) => Some(Outcome::failure(
            attempt,
            &policy,
            format!("handler panicked: {join}"),
            now,
        )),
        Ended::TimedOut => Some(Outcome::failure(
            attempt,
            &policy,
            format!("timed out after {:?}", policy.timeout),
            now,
        )),
        Ended::Stopped => match control.reason.get().copied().unwrap_or(StopReason::Shutdown) {
            StopReason::Cancelled => Some(Outcome::Cancelled {
                reason: "cancelled while running".into(),
            }),
            StopReason::Shutdown => Some(Outcome::Released),
            StopReason::LeaseLost => None,
        },
    };
    let Some(outcome) = outcome else {
        warn!("lease lost (rescued elsewhere or heartbeats failed); stopped without acknowledging");
        shared.untrack(lease);
        return;
    };
    let outcome = clean(outcome);
    record_outcome(&kind, &outcome, started.elapsed());
    match outcome.error() {
        Some(error) => debug!(%error, state = %outcome.state(), "attempt failed"),
        None => debug!(state = %outcome.state(), elapsed_ms = started.elapsed().as_millis() as u64, "attempt ended"),
    }
    let _ = shared.acks.send(Ack {
        lease,
        pipeline,
        outcome,
    });
}

/// Error text as stored: no NUL bytes (PostgreSQL rejects them in text) and at most 8 KiB.
fn clean(outcome: Outcome) -> Outcome {
    fn text(message: String) -> String {
        let mut message = message.replace('\0', "");
        if message.len() > 8192 {
            let mut end = 8192;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        message
    }
    match outcome {
        Outcome::Retry { at, error } => Outcome::Retry { at, error: text(error) },
        Outcome::Dead { error } => Outcome::Dead { error: text(error) },
        Outcome::Cancelled { reason } => Outcome::Cancelled { reason: text(reason) },
        other => other,
    }
}

fn record_outcome(kind: &str, outcome: &Outcome, ran: Duration) {
    metrics::histogram!("enclii_queue_job_duration_seconds", "kind" => kind.to_string()).record(ran.as_secs_f64());
    let counter = match outcome {
        Outcome::Completed => "enclii_queue_jobs_completed_total",
        Outcome::Retry { .. } => "enclii_queue_jobs_retried_total",
        Outcome::Dead { .. } => "enclii_queue_jobs_dead_total",
        Outcome::Cancelled { .. } => "enclii_queue_jobs_cancelled_total",
        Outcome::Released => "enclii_queue_jobs_released_total",
    };
    metrics::counter!(counter, "kind" => kind.to_string()).increment(1);
    if matches!(outcome, Outcome::Retry { .. } | Outcome::Dead { .. }) {
        metrics::counter!("enclii_queue_jobs_failed_total", "kind" => kind.to_string()).increment(1);
    }
}

/// Acknowledges finished jobs in batches: everything that finished while the previous batch was
/// being written goes in the next one.
async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Ack>, done: CancellationToken) {
    let mut batch = Vec::with_capacity(1024);
    let mut failures = 0u32;
    loop {
        if batch.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => if n == 0 { return },
                _ = done.cancelled() => {
                    while let Ok(ack) = rx.try_recv() {
                        batch.push(ack);
                    }
                    if batch.is_empty() {
                        return;
                    }
                }
            }
        }
        match shared.backend.acknowledge(batch.clone()).await {
            Ok(()) => {
                failures = 0;
                for ack in batch.drain(..) {
                    shared.untrack(ack.lease);
                }
            }
            Err(e) if !e.is_transient() && failures >= 2 => {
                // The backend keeps rejecting this batch: acknowledge one by one, so that one
                // bad ack cannot hold back the others. A rejected one is dropped; its job runs
                // again when its lease expires (at-least-once).
                failures = 0;
                let mut kept = Vec::new();
                for ack in batch.drain(..) {
                    match shared.backend.acknowledge(vec![ack.clone()]).await {
                        Ok(()) => shared.untrack(ack.lease),
                        Err(e) if e.is_transient() => kept.push(ack),
                        Err(e) => {
                            tracing::error!(job = ack.lease.job, error = %e, "acknowledgement rejected; dropping it");
                            shared.untrack(ack.lease);
                        }
                    }
                }
                batch = kept;
            }
            Err(e) => {
                // Keep the batch (its leases stay renewed) and try again.
                failures += 1;
                let pause = backoff_pause(failures);
                warn!(error = %e, jobs = batch.len(), retry_in = ?pause, "acknowledgement failed");
                tokio::time::sleep(pause).await;
            }
        }
        // Take whatever finished meanwhile into the next batch.
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(ack) => batch.push(ack),
                Err(_) => break,
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, done: CancellationToken) {
    let (lease, every) = (shared.config.lease, shared.config.heartbeat_every);
    // This process's leases are good until the last successful renewal was *sent* plus a lease.
    let mut valid_until = Instant::now() + lease;
    // Fixed-rate ticks, each call bounded by half a period: checks are at most 1.5 periods apart.
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = done.cancelled() => return,
        }
        let leases: Vec<Lease> = shared
            .running
            .lock()
            .expect("running map")
            .values()
            .map(|e| e.lease)
            .collect();
        if leases.is_empty() {
            valid_until = Instant::now() + lease;
            continue;
        }
        let sent = Instant::now();
        match tokio::time::timeout(every / 2, shared.backend.heartbeat(&shared.id, &leases, lease)).await {
            Ok(Ok(reply)) => {
                valid_until = sent + lease;
                for id in reply.lost {
                    shared.stop_job(id, StopReason::LeaseLost);
                }
                for id in reply.cancel {
                    shared.stop_job(id, StopReason::Cancelled);
                }
            }
            Ok(Err(e)) => warn!(error = %e, "heartbeat failed"),
            Err(_) => warn!(timeout = ?(every / 2), "heartbeat timed out"),
        }
        // The next check may be up to 1.5 periods away: if the leases could lapse before then,
        // another worker may soon run these jobs, so stop ours now — never run a job twice.
        if Instant::now() + 2 * every >= valid_until {
            warn!("leases could not be renewed in time; stopping all running jobs");
            shared.stop_all(StopReason::LeaseLost);
        }
    }
}

async fn rescue_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let jitter =
            Duration::from_millis(rand::rng().random_range(0..=shared.config.rescue_every.as_millis() as u64 / 4));
        tokio::select! {
            _ = tokio::time::sleep(shared.config.rescue_every + jitter) => {}
            _ = shutdown.cancelled() => return,
        }
        match shared.backend.rescue_expired().await {
            Ok(report) if !report.retried.is_empty() || !report.dead.is_empty() => {
                metrics::counter!("enclii_queue_jobs_rescued_total", "outcome" => "retried")
                    .increment(report.retried.len() as u64);
                metrics::counter!("enclii_queue_jobs_rescued_total", "outcome" => "dead")
                    .increment(report.dead.len() as u64);
                info!(
                    retried = report.retried.len(),
                    dead = report.dead.len(),
                    "rescued jobs of dead workers"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "lease rescue failed"),
        }
    }
}
