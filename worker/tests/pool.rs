//! The worker pool against real stores: timeouts that stop the work, cancellation of running jobs,
//! panics and bad payloads, graceful shutdown, caps across worker pools, fairness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use enclii_queue::{Backend, JobPolicy, JobState, NewJob, ProjectLimits};
use enclii_worker::{Handler, JobContext, JobError, Registry, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[path = "../../queue/tests/common/mod.rs"]
mod common;

async fn sqlite() -> Arc<dyn Backend> {
    common::sqlite().await
}

/// A fresh PostgreSQL store; the database is dropped when the guard is.
async fn postgres() -> (Arc<dyn Backend>, common::TestDatabase) {
    common::postgres().await
}

fn fast_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        prefetch: concurrency,
        lease: Duration::from_millis(1500),
        heartbeat_every: Duration::from_millis(100),
        poll_every: Duration::from_millis(50),
        rescue_every: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(300),
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), enclii_worker::WorkerError>>,
}

fn start(backend: &Arc<dyn Backend>, registry: Registry, config: WorkerConfig) -> Running {
    let stop = CancellationToken::new();
    let worker = Worker::new(backend.clone(), registry, config);
    let task = tokio::spawn(worker.run(stop.clone()));
    Running { stop, task }
}

impl Running {
    async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_for_state(q: &Arc<dyn Backend>, id: i64, want: JobState, patience: Duration) -> JobState {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let state = q.job(id).await.unwrap().unwrap().state;
        if state == want || tokio::time::Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sleeps for the payload's `ms`, then sets `finished`; notes when it was stopped early.
struct Sleeper {
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
    saw_cancel: Arc<AtomicBool>,
}

#[async_trait]
impl Handler for Sleeper {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let ms = ctx.job.payload["ms"].as_u64().unwrap_or(0);
        let cancel = ctx.cancel.clone();
        let saw_cancel = self.saw_cancel.clone();
        // Stands for external work (a build on the builder) that must be stopped through the token.
        tokio::spawn(async move {
            cancel.cancelled().await;
            saw_cancel.store(true, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn sleeper() -> (Sleeper, Arc<AtomicUsize>, Arc<AtomicBool>, Arc<AtomicBool>) {
    let s = Sleeper {
        started: Arc::default(),
        finished: Arc::default(),
        saw_cancel: Arc::default(),
    };
    let (a, b, c) = (s.started.clone(), s.finished.clone(), s.saw_cancel.clone());
    (s, a, b, c)
}

fn sleep_job(ms: u64, policy: JobPolicy) -> NewJob {
    NewJob::new("sleep", "p", json!({ "ms": ms })).with_policy(policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_really_stops_the_work_and_counts_as_a_failed_attempt() {
    let q = sqlite().await;
    let (handler, _, finished, saw_cancel) = sleeper();
    let mut registry = Registry::new();
    registry.register("sleep", handler);
    let policy = JobPolicy {
        max_attempts: 1,
        timeout: Duration::from_millis(200),
        ..JobPolicy::default()
    };
    let id = q.enqueue(vec![sleep_job(3_000, policy)]).await.unwrap()[0].id;
    let worker = start(&q, registry, fast_config(4));
    assert_eq!(
        wait_for_state(&q, id, JobState::Dead, Duration::from_secs(5)).await,
        JobState::Dead
    );
    let rec = q.job(id).await.unwrap().unwrap();
    assert!(rec.last_error.unwrap().contains("timed out"));
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the handler's cancellation token fired"
    );
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the timed-out work never ran to its end"
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_handler() {
    let (q, _database) = postgres().await;
    let (handler, started, finished, saw_cancel) = sleeper();
    let mut registry = Registry::new();
    registry.register("sleep", handler);
    let id = q.enqueue(vec![sleep_job(10_000, JobPolicy::default())]).await.unwrap()[0].id;
    let worker = start(&q, registry, fast_config(4));
    assert_eq!(
        wait_for_state(&q, id, JobState::Running, Duration::from_secs(5)).await,
        JobState::Running
    );
    while started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(q.cancel(id).await.unwrap(), enclii_queue::CancelOutcome::Requested);
    assert_eq!(
        wait_for_state(&q, id, JobState::Cancelled, Duration::from_secs(5)).await,
        JobState::Cancelled
    );
    assert!(saw_cancel.load(Ordering::SeqCst));
    assert!(!finished.load(Ordering::SeqCst));
    worker.shutdown().await;
}

struct Faulty;

#[async_trait]
impl Handler for Faulty {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        match ctx.job.payload["mode"].as_str() {
            Some("panic") => panic!("handler bug"),
            Some("typed") => {
                #[derive(serde::Deserialize)]
                #[allow(dead_code)]
                struct Expected {
                    commit: String,
                }
                ctx.payload::<Expected>().map(|_| ())
            }
            Some("ok") => Ok(()),
            _ => Err(JobError::retry("transient")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_retry_and_malformed_payloads_dead_letter_without_hurting_the_worker() {
    let q = sqlite().await;
    let mut registry = Registry::new();
    registry.register("faulty", Faulty);
    let policy = JobPolicy {
        max_attempts: 2,
        backoff: enclii_queue::Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
        ..JobPolicy::default()
    };
    let jobs = ["panic", "typed", "retry"]
        .map(|mode| NewJob::new("faulty", "p", json!({ "mode": mode })).with_policy(policy))
        .to_vec();
    let ids: Vec<i64> = q.enqueue(jobs).await.unwrap().iter().map(|e| e.id).collect();
    let worker = start(&q, registry, fast_config(4));
    for id in &ids {
        assert_eq!(
            wait_for_state(&q, *id, JobState::Dead, Duration::from_secs(5)).await,
            JobState::Dead
        );
    }
    let panicked = q.job(ids[0]).await.unwrap().unwrap();
    assert_eq!(panicked.attempt, 2, "a panic is a failed attempt, retried");
    assert!(panicked.last_error.unwrap().contains("panicked"));
    let malformed = q.job(ids[1]).await.unwrap().unwrap();
    assert_eq!(malformed.attempt, 1, "a malformed payload is not retried");
    assert!(malformed.last_error.unwrap().contains("malformed payload"));
    assert_eq!(q.job(ids[2]).await.unwrap().unwrap().attempt, 2);
    // The worker survived all of it and still runs jobs.
    let ok = q
        .enqueue(vec![NewJob::new("faulty", "p", json!({ "mode": "ok" }))])
        .await
        .unwrap()[0]
        .id;
    assert_eq!(
        wait_for_state(&q, ok, JobState::Completed, Duration::from_secs(5)).await,
        JobState::Completed
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_short_jobs_and_hands_back_long_ones() {
    let (q, _database) = postgres().await;
    let (handler, started, ..) = sleeper();
    let mut registry = Registry::new();
    registry.register("sleep", handler);
    let ids = q
        .enqueue(vec![
            sleep_job(100, JobPolicy::default()),
            sleep_job(20_000, JobPolicy::default()),
        ])
        .await
        .unwrap();
    let worker = start(&q, registry, fast_config(4));
    while started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let began = std::time::Instant::now();
    worker.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "shutdown does not wait for the long job"
    );
    let short = q.job(ids[0].id).await.unwrap().unwrap();
    assert_eq!(
        short.state,
        JobState::Completed,
        "in-flight work within the grace period finishes"
    );
    let long = q.job(ids[1].id).await.unwrap().unwrap();
    assert_eq!(
        (long.state, long.attempt),
        (JobState::Available, 0),
        "handed back, attempt not spent"
    );
}

/// Counts how many jobs of each project run at once.
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

struct Counting(Arc<Gauge>);

#[async_trait]
impl Handler for Counting {
    async fn run(&self, _ctx: JobContext) -> Result<(), JobError> {
        let now = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_cap_holds_across_worker_pools() {
    let (q, _database) = postgres().await;
    q.set_project_limits(
        "capped",
        ProjectLimits {
            max_running: Some(2),
            jobs_per_minute: None,
        },
    )
    .await
    .unwrap();
    let gauge = Arc::new(Gauge {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let ids = q
        .enqueue((0..30).map(|_| NewJob::new("count", "capped", json!({}))).collect())
        .await
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut registry = Registry::new();
        registry.register("count", Counting(gauge.clone()));
        workers.push(start(&q, registry, fast_config(8)));
    }
    for e in &ids {
        assert_eq!(
            wait_for_state(&q, e.id, JobState::Completed, Duration::from_secs(30)).await,
            JobState::Completed
        );
    }
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        2,
        "never more than 2 running, though 24 slots were free"
    );
    for w in workers {
        w.shutdown().await;
    }
}

struct Recorder {
    done: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.done.lock().unwrap().push(ctx.job.project.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_project_is_not_starved_by_a_big_backlog() {
    let q = sqlite().await;
    q.enqueue((0..1000).map(|_| NewJob::new("rec", "big", json!({}))).collect())
        .await
        .unwrap();
    q.enqueue((0..20).map(|_| NewJob::new("rec", "small", json!({}))).collect())
        .await
        .unwrap();
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    registry.register("rec", Recorder { done: done.clone() });
    let worker = start(&q, registry, fast_config(8));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.lock().unwrap().len() < 1020 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await;
    let order = done.lock().unwrap().clone();
    assert_eq!(order.len(), 1020);
    let last_small = order.iter().rposition(|p| p == "small").unwrap();
    assert!(
        last_small < 100,
        "the small project's 20 jobs finished within the first 100 completions, not after the backlog (at {last_small})"
    );
}

/// Test double: a real backend whose heartbeats can be made to hang, as over a black-holed
/// connection. Everything else is delegated untouched.
struct HangingHeartbeats {
    inner: Arc<dyn Backend>,
    hang: AtomicBool,
}

#[async_trait]
impl Backend for HangingHeartbeats {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> enclii_queue::Result<()> {
        self.inner.ping().await
    }
    async fn enqueue(&self, jobs: Vec<NewJob>) -> enclii_queue::Result<Vec<enclii_queue::Enqueued>> {
        self.inner.enqueue(jobs).await
    }
    async fn enqueue_pipeline(
        &self,
        pipeline: enclii_queue::NewPipeline,
    ) -> enclii_queue::Result<enclii_queue::PipelineEnqueued> {
        self.inner.enqueue_pipeline(pipeline).await
    }
    async fn claim(&self, request: &enclii_queue::ClaimRequest) -> enclii_queue::Result<Vec<enclii_queue::ClaimedJob>> {
        self.inner.claim(request).await
    }
    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[enclii_queue::Lease],
        lease: Duration,
    ) -> enclii_queue::Result<enclii_queue::HeartbeatReply> {
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.inner.heartbeat(worker, leases, lease).await
    }
    async fn acknowledge(&self, acks: Vec<enclii_queue::Ack>) -> enclii_queue::Result<()> {
        self.inner.acknowledge(acks).await
    }
    async fn cancel(&self, id: i64) -> enclii_queue::Result<enclii_queue::CancelOutcome> {
        self.inner.cancel(id).await
    }
    async fn retry(&self, id: i64) -> enclii_queue::Result<()> {
        self.inner.retry(id).await
    }
    async fn rescue_expired(&self) -> enclii_queue::Result<enclii_queue::RescueReport> {
        self.inner.rescue_expired().await
    }
    async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> enclii_queue::Result<u64> {
        self.inner.prune(before).await
    }
    async fn job(&self, id: i64) -> enclii_queue::Result<Option<enclii_queue::JobRecord>> {
        self.inner.job(id).await
    }
    async fn list_jobs(&self, filter: &enclii_queue::JobFilter) -> enclii_queue::Result<Vec<enclii_queue::JobRecord>> {
        self.inner.list_jobs(filter).await
    }
    async fn pipeline(&self, id: i64) -> enclii_queue::Result<Option<enclii_queue::PipelineRecord>> {
        self.inner.pipeline(id).await
    }
    async fn stats(&self) -> enclii_queue::Result<enclii_queue::QueueStats> {
        self.inner.stats().await
    }
    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> enclii_queue::Result<()> {
        self.inner.set_project_limits(project, limits).await
    }
    async fn wait_for_work(&self, timeout: Duration) {
        self.inner.wait_for_work(timeout).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_renew_its_leases_stops_its_jobs_before_they_lapse() {
    let flaky = Arc::new(HangingHeartbeats {
        inner: sqlite().await,
        hang: AtomicBool::new(false),
    });
    let q: Arc<dyn Backend> = flaky.clone();
    let (handler, started, finished, saw_cancel) = sleeper();
    let mut registry = Registry::new();
    registry.register("sleep", handler);
    q.enqueue(vec![sleep_job(30_000, JobPolicy::default())]).await.unwrap();
    let config = WorkerConfig {
        lease: Duration::from_millis(3000),
        heartbeat_every: Duration::from_millis(300),
        rescue_every: Duration::from_secs(3600),
        ..fast_config(2)
    };
    let lease = config.lease;
    let worker = start(&q, registry, config);
    while started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    flaky.hang.store(true, Ordering::SeqCst);
    let hung_at = std::time::Instant::now();
    while !saw_cancel.load(Ordering::SeqCst) && hung_at.elapsed() < 3 * lease {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_cancel.load(Ordering::SeqCst), "the job was stopped");
    assert!(
        hung_at.elapsed() < lease,
        "stopped before its lease could lapse and another worker take it ({:?})",
        hung_at.elapsed()
    );
    assert!(!finished.load(Ordering::SeqCst));
    flaky.hang.store(false, Ordering::SeqCst);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_text_the_database_would_reject_is_cleaned_not_stuck() {
    let (q, _database) = postgres().await;
    let mut registry = Registry::new();
    registry.register("nul", NulError);
    let id = q.enqueue(vec![NewJob::new("nul", "p", json!({}))]).await.unwrap()[0].id;
    let worker = start(&q, registry, fast_config(2));
    assert_eq!(
        wait_for_state(&q, id, JobState::Dead, Duration::from_secs(10)).await,
        JobState::Dead
    );
    let error = q.job(id).await.unwrap().unwrap().last_error.unwrap();
    assert!(
        error.starts_with("bad byte") && !error.contains('\0') && error.len() < 9000,
        "{error:?}"
    );
    worker.shutdown().await;
}

struct NulError;

#[async_trait]
impl Handler for NulError {
    async fn run(&self, _ctx: JobContext) -> Result<(), JobError> {
        Err(JobError::abort(format!("bad byte \0 here {}", "x".repeat(20_000))))
    }
}
