//! The workloads, and the worker child process of `crash`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use enclii_queue::{Backend, JobState, NewJob};
use enclii_worker::{Registry, Worker, WorkerConfig, WorkerError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::env::{Env, open_backend};
use crate::meter::{
    Bench, Meter, Metered, NOOP, Payload, RunState, SLEEP, UNFINISHED, count_in, job, now_us, percentiles,
    process_cpu_s, process_usage, round3,
};
use crate::store::Store;
use crate::{ChildArgs, RunArgs, worker_config};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Drain,
    Steady,
    Crash,
    Fairness,
    Wake,
    Soak,
    Skew,
}

impl Workload {
    fn as_str(self) -> &'static str {
        match self {
            Workload::Drain => "drain",
            Workload::Steady => "steady",
            Workload::Crash => "crash",
            Workload::Fairness => "fairness",
            Workload::Wake => "wake",
            Workload::Soak => "soak",
            Workload::Skew => "skew",
        }
    }
}

/// Runs one workload in a fresh queue store and returns its JSON line.
pub async fn run(workload: Workload, args: RunArgs) -> Result<String> {
    let env = Env::create(args.backend, args.url.as_deref()).await?;
    let result = match workload {
        Workload::Drain => match args.workers {
            Some(k) => crate::scale::drain_workers(&args, &env, k.max(1)).await,
            None => drain(&args, &env).await,
        },
        Workload::Steady => steady(&args, &env).await,
        Workload::Crash => crash(&args, &env).await,
        Workload::Fairness => fairness(&args, &env).await,
        Workload::Wake => wake(&args, &env).await,
        Workload::Soak => crate::soak::soak(&args, &env).await,
        Workload::Skew => crate::scale::skew(&args, &env).await,
    };
    env.destroy().await;
    let system = format!("roundhouse-{}", args.backend.as_str());
    Ok(json_line(&system, workload.as_str(), result?))
}

/// The run's JSON line: system and workload, the workload's fields, then this process's CPU time
/// and peak memory.
pub fn json_line(system: &str, workload: &str, mut fields: Fields) -> String {
    let (cpu_s, rss) = process_usage();
    let mut line = serde_json::Map::new();
    line.insert("system".into(), json!(system));
    line.insert("workload".into(), json!(workload));
    line.append(&mut fields);
    line.insert("cpu_s".into(), json!(cpu_s));
    line.insert("rss_peak_mib".into(), json!(rss));
    ordered_line(line)
}

/// The headline keys first, in this order; the rest sorted.
const LEAD: [&str; 17] = [
    "system",
    "workload",
    "n",
    "concurrency",
    "webhooks_per_s",
    "enqueue_jobs_per_s",
    "drain_jobs_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "non_202",
    "lost",
    "duplicated",
    "recovery_s",
    "project_done_s",
    "b_done_after_enqueue_s",
];

fn ordered_line(mut line: Fields) -> String {
    let mut parts = Vec::with_capacity(line.len());
    for key in LEAD {
        if let Some(value) = line.remove(key) {
            parts.push(format!("{}:{value}", Value::from(key)));
        }
    }
    for (key, value) in line {
        parts.push(format!("{}:{value}", Value::from(key)));
    }
    format!("{{{}}}", parts.join(","))
}

pub type Fields = serde_json::Map<String, Value>;

pub(crate) fn fields(value: Value) -> Fields {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("fields are built from json!({{..}})"),
    }
}

fn per_s(n: usize, d: Duration) -> Option<f64> {
    (!d.is_zero()).then(|| round3(n as f64 / d.as_secs_f64()))
}

fn latency_fields(latencies_ms: Vec<f64>) -> Value {
    let [p50, p95, p99, max] = percentiles(latencies_ms);
    json!({ "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max })
}

/// A worker in this process, with `bench.noop` and `bench.sleep` registered.
struct InProcess {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

fn registry(state: Option<Arc<RunState>>, store: Option<Store>) -> Registry {
    let mut registry = Registry::new();
    registry.register(
        NOOP,
        Bench {
            state: state.clone(),
            store: store.clone(),
            sleep: false,
        },
    );
    registry.register(
        SLEEP,
        Bench {
            state,
            store,
            sleep: true,
        },
    );
    registry
}

impl InProcess {
    fn start(backend: Arc<dyn Backend>, state: Arc<RunState>, config: WorkerConfig) -> InProcess {
        let shutdown = CancellationToken::new();
        let worker = Worker::new(backend, registry(Some(state), None), config);
        let task = tokio::spawn(worker.run(shutdown.clone()));
        InProcess { shutdown, task }
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("worker task panicked")??;
        Ok(())
    }
}

/// Polls until `cond` holds or `deadline` passes; returns whether it held.
async fn poll_until(deadline: Instant, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `stats()` until nothing is unfinished; returns what is left.
async fn settle(backend: &dyn Backend, deadline: Instant) -> Result<u64> {
    loop {
        let left = retrying("reading queue stats", || async {
            Ok(count_in(backend, &UNFINISHED).await?)
        })
        .await?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Jobs of `kind` for positions `range` of `project`, in chunks of `chunk`.
pub(crate) fn build_chunks(
    kind: &str,
    project: &str,
    range: std::ops::Range<usize>,
    chunk: usize,
    ms: u64,
) -> Vec<Vec<NewJob>> {
    let jobs: Vec<NewJob> = range.map(|i| job(kind, project, Payload { i, t: 0, ms })).collect();
    jobs.chunks(chunk.max(1)).map(<[NewJob]>::to_vec).collect()
}

/// Enqueues pre-built chunks one `enqueue` call each, stamping the enqueue time into each payload.
pub(crate) async fn enqueue_chunks(backend: &dyn Backend, chunks: Vec<Vec<NewJob>>) -> Result<(Duration, Vec<i64>)> {
    let mut busy = Duration::ZERO;
    let mut ids = Vec::new();
    for mut chunk in chunks {
        let t = now_us();
        for job in &mut chunk {
            job.payload["t"] = json!(t);
        }
        let started = Instant::now();
        let enqueued = backend.enqueue(chunk).await.context("enqueue")?;
        busy += started.elapsed();
        ids.extend(enqueued.iter().map(|e| e.id));
    }
    Ok((busy, ids))
}

/// After the handlers are done: waits for the acknowledgements, then for `stats()` to show no
/// unfinished job. Returns the unfinished count left.
async fn finish(backend: &dyn Backend, meter: &Meter, n: usize, deadline: Instant) -> Result<u64> {
    poll_until(deadline, Duration::from_millis(1), || {
        meter.acked_completed.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    settle(backend, deadline).await
}

/// The job kind and sleep the run uses: no-op jobs unless `--sleep-ms` asks for more.
pub(crate) fn job_shape(args: &RunArgs) -> (&'static str, u64) {
    match args.sleep_ms {
        Some(ms) if ms > 0 => (SLEEP, ms),
        _ => (NOOP, 0),
    }
}

/// Starts the in-process worker on a metered view of `backend`.
fn start_metered(
    backend: &Arc<dyn Backend>,
    state: &Arc<RunState>,
    base: Instant,
    concurrency: usize,
    args: &RunArgs,
) -> (Arc<Meter>, InProcess) {
    let meter = Meter::new(base);
    let metered: Arc<dyn Backend> = Arc::new(Metered {
        inner: backend.clone(),
        meter: meter.clone(),
    });
    let worker = InProcess::start(
        metered,
        state.clone(),
        worker_config(concurrency, args.prefetch, args.lease_ms, args.rescue_ms),
    );
    (meter, worker)
}

/// Waits (up to `deadline_s`) for every job to be done and acknowledged, stops the worker, and
/// returns the jobs left unfinished and the drain time (first claim → last acknowledgement).
async fn wind_down(
    backend: &dyn Backend,
    meter: &Meter,
    state: &RunState,
    worker: InProcess,
    n: usize,
    deadline_s: u64,
) -> Result<(u64, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    state.wait_all(deadline).await;
    let unfinished = finish(backend, meter, n, deadline).await?;
    worker.stop().await?;
    let drain = match (meter.first_claim(), meter.last_ack()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    Ok((unfinished, drain))
}

async fn drain(args: &RunArgs, env: &Env) -> Result<Fields> {
    let n = args.jobs.unwrap_or(20_000);
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let (kind, ms) = job_shape(args);
    let backend = env.open(args.max_conns).await?;
    let base = Instant::now();
    let state = RunState::new(n, base);
    let chunks = build_chunks(kind, "loadtest", 0..n, args.chunk, ms);
    let (enqueue_busy, _) = enqueue_chunks(&*backend, chunks).await?;

    let (meter, worker) = start_metered(&backend, &state, base, concurrency, args);
    let (unfinished, drain) = wind_down(&*backend, &meter, &state, worker, n, deadline_s).await?;
    let (lost, duplicated) = state.lost_duplicated();
    let mut out = fields(json!({
        "n": n,
        "concurrency": concurrency,
        "max_prefetch": args.prefetch.unwrap_or(4 * concurrency),
        "enqueue_jobs_per_s": per_s(n, enqueue_busy),
        "drain_jobs_per_s": per_s(n, drain),
        "enqueue_s": round3(enqueue_busy.as_secs_f64()),
        "drain_s": round3(drain.as_secs_f64()),
    }));
    out.append(&mut fields(latency_fields(state.latencies_ms())));
    out.append(&mut fields(json!({
        "latency": "enqueue call (wall time in payload) -> handler start",
        "lost": lost,
        "duplicated": duplicated,
        "unfinished_after": unfinished,
        "chunk": args.chunk,
        "worker": meter.summary(),
    })));
    Ok(out)
}

async fn steady(args: &RunArgs, env: &Env) -> Result<Fields> {
    let rate = args.rate.max(1) as u64;
    let n = args.jobs.unwrap_or(10_000);
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let (kind, ms) = job_shape(args);
    let backend = env.open(args.max_conns).await?;
    let base = Instant::now();
    let state = RunState::new(n, base);
    let (meter, worker) = start_metered(&backend, &state, base, concurrency, args);
    // Let the worker issue its first (empty) claim and start waiting for work.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Ticks of 2 ms (or longer at low rates), each enqueueing rate × tick jobs, one per call. Calls
    // run concurrently (up to 256 outstanding) so that a slow call does not slow the producer.
    let per_tick = (rate * 2 / 1000).max(1);
    let tick = Duration::from_micros(per_tick * 1_000_000 / rate);
    let outstanding = Arc::new(tokio::sync::Semaphore::new(256));
    let call_ms = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let produce_start = Instant::now();
    let mut i = 0;
    while i < n {
        interval.tick().await;
        for _ in 0..per_tick {
            if i >= n {
                break;
            }
            let permit = outstanding.clone().acquire_owned().await.expect("never closed");
            let (backend, call_ms, failure) = (backend.clone(), call_ms.clone(), failure.clone());
            let job = job(kind, "loadtest", Payload { i, t: now_us(), ms });
            tokio::spawn(async move {
                let started = Instant::now();
                match backend.enqueue(vec![job]).await {
                    Ok(_) => call_ms
                        .lock()
                        .expect("call_ms")
                        .push(started.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failure.lock().expect("failure").get_or_insert(e.to_string());
                    }
                }
                drop(permit);
            });
            i += 1;
        }
    }
    let _all = outstanding.acquire_many(256).await.expect("never closed");
    let produced = produce_start.elapsed();
    let failed = failure.lock().expect("failure").take();
    if let Some(e) = failed {
        worker.stop().await?;
        bail!("enqueue failed during the steady run: {e}");
    }

    let (unfinished, drain) = wind_down(&*backend, &meter, &state, worker, n, deadline_s).await?;
    let (lost, duplicated) = state.lost_duplicated();
    let [c50, _, c99, cmax] = percentiles(std::mem::take(&mut *call_ms.lock().expect("call_ms")));
    let mut out = fields(json!({
        "n": n,
        "concurrency": concurrency,
        "max_prefetch": args.prefetch.unwrap_or(4 * concurrency),
        "target_rate": rate,
        "enqueue_jobs_per_s": per_s(n, produced),
        "drain_jobs_per_s": per_s(n, drain),
    }));
    out.append(&mut fields(latency_fields(state.latencies_ms())));
    out.append(&mut fields(json!({
        "latency": "enqueue call (wall time in payload) -> handler start",
        "lost": lost,
        "duplicated": duplicated,
        "unfinished_after": unfinished,
        "enqueue_call_p50_ms": c50,
        "enqueue_call_p99_ms": c99,
        "enqueue_call_max_ms": cmax,
        "worker": meter.summary(),
    })));
    Ok(out)
}

async fn fairness(args: &RunArgs, env: &Env) -> Result<Fields> {
    let n_a = args.jobs.unwrap_or(10_000);
    let n_b = args.b_jobs;
    let n = n_a + n_b;
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let ms = args.sleep_ms.unwrap_or(1);
    let kind = if ms > 0 { SLEEP } else { NOOP };
    let backend = env.open(args.max_conns).await?;
    let a_chunks = build_chunks(kind, "project-a", 0..n_a, args.chunk, ms);
    let b_chunks = build_chunks(kind, "project-b", n_a..n, args.chunk, ms);

    let base = Instant::now();
    let state = RunState::new(n, base);
    let (meter, worker) = start_metered(&backend, &state, base, concurrency, args);
    let (a_busy, _) = enqueue_chunks(&*backend, a_chunks).await?;
    let b_enqueued_at = base.elapsed();
    let (b_busy, _) = enqueue_chunks(&*backend, b_chunks).await?;
    let (unfinished, drain) = wind_down(&*backend, &meter, &state, worker, n, deadline_s).await?;
    let done = state.project_done_s();
    let a_done = done.get("project-a").copied();
    let b_done = done.get("project-b").copied();
    let (lost, duplicated) = state.lost_duplicated();
    let mut out = fields(json!({
        "n": n,
        "concurrency": concurrency,
        "max_prefetch": args.prefetch.unwrap_or(4 * concurrency),
        "enqueue_jobs_per_s": per_s(n, a_busy + b_busy),
        "drain_jobs_per_s": per_s(n, drain),
    }));
    out.append(&mut fields(latency_fields(state.latencies_ms())));
    out.append(&mut fields(json!({
        "latency": "enqueue call (wall time in payload) -> handler start",
        "lost": lost,
        "duplicated": duplicated,
        "unfinished_after": unfinished,
        "jobs_a": n_a,
        "jobs_b": n_b,
        "sleep_ms": ms,
        "b_enqueued_s": round3(b_enqueued_at.as_secs_f64()),
        "project_done_s": { "a": a_done, "b": b_done },
        "b_done_after_enqueue_s": b_done.map(|b| round3(b - b_enqueued_at.as_secs_f64())),
        "worker": meter.summary(),
    })));
    Ok(out)
}

/// The path of this program. When it was rebuilt while running (cargo replaces the file), the
/// link names a deleted file: use the new one at the same path.
pub(crate) fn this_binary() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    if exe.exists() {
        return Ok(exe);
    }
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) => Ok(path.into()),
        None => Ok(exe),
    }
}

/// Retries a read used for polling through transient errors (e.g. SQLite's busy lock) for up to
/// 5 s before giving up.
async fn retrying<T, F, Fut>(what: &str, mut read: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match read().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < give_up => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context(what.to_string())),
        }
    }
}

/// A worker child process of `crash`.
struct Child {
    process: tokio::process::Child,
}

impl Child {
    fn spawn(args: &RunArgs, env: &Env, concurrency: usize) -> Result<Child> {
        let exe = this_binary()?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("worker")
            .args(["--backend", env.kind.as_str(), "--url", &env.url])
            .args(["--prefix", &env.prefix])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--max-conns", &args.max_conns.to_string()]);
        if let Some(n) = args.prefetch {
            command.args(["--prefetch", &n.to_string()]);
        }
        if let Some(ms) = args.lease_ms {
            command.args(["--lease-ms", &ms.to_string()]);
        }
        if let Some(ms) = args.rescue_ms {
            command.args(["--rescue-ms", &ms.to_string()]);
        }
        let process = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker child process")?;
        Ok(Child { process })
    }

    /// SIGKILL, and reap.
    async fn kill(mut self) -> Result<()> {
        self.process.start_kill()?;
        self.process.wait().await?;
        Ok(())
    }
}

async fn running(backend: &dyn Backend) -> Result<u64> {
    retrying("reading queue stats", || async {
        Ok(count_in(backend, &[JobState::Running]).await?)
    })
    .await
}

async fn crash(args: &RunArgs, env: &Env) -> Result<Fields> {
    let n = args.jobs.unwrap_or(64);
    let concurrency = args.concurrency.unwrap_or(64);
    let ms = args.sleep_ms.unwrap_or(2_000);
    let deadline_s = args.deadline_s.unwrap_or(60);
    let backend = env.open(args.max_conns).await?;
    let store = Store::connect(env.kind, &env.url, &env.prefix).await?;
    store.init().await?;

    let chunks = build_chunks(SLEEP, "loadtest", 0..n, n.max(1), ms);
    let (enqueue_busy, ids) = enqueue_chunks(&*backend, chunks).await?;
    let enqueued_us = now_us();

    let first = Child::spawn(args, env, concurrency)?;
    let wait_start = Instant::now() + Duration::from_secs(30);
    loop {
        if running(&*backend).await? > 0 {
            break;
        }
        if Instant::now() >= wait_start {
            first.kill().await?;
            bail!("the first worker started no job within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(args.kill_after_ms)).await;
    let running_at_kill = running(&*backend).await?;
    first.kill().await?;
    let killed = Instant::now();
    let killed_us = now_us();
    let completed_before_kill = retrying("reading completions", || store.all()).await?.len();

    let second = Child::spawn(args, env, concurrency)?;
    let deadline = killed + Duration::from_secs(deadline_s);
    let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
    loop {
        let done: std::collections::HashSet<i64> = retrying("reading completions", || store.all())
            .await?
            .iter()
            .map(|c| c.job)
            .collect();
        if wanted.is_subset(&done) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the acknowledgements land, so that nothing can run again once the worker is gone.
    let unfinished = settle(&*backend, Instant::now() + Duration::from_secs(10)).await?;
    second.kill().await?;

    let completions = retrying("reading completions", || store.all()).await?;
    store.close().await;
    let mut runs: HashMap<i64, u32> = HashMap::new();
    for c in &completions {
        *runs.entry(c.job).or_default() += 1;
    }
    let lost = wanted.iter().filter(|id| !runs.contains_key(id)).count();
    let duplicated = runs.values().filter(|&&r| r > 1).count();
    let rerun = completions.iter().filter(|c| c.attempt > 1).count();
    let last_done_us = completions.iter().map(|c| c.done_us).max();
    let recovery_s = last_done_us.map(|t| round3((t - killed_us) as f64 / 1e6));
    let latencies: Vec<f64> = completions
        .iter()
        .map(|c| c.latency_us.max(0) as f64 / 1000.0)
        .collect();
    let mut states: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let state = backend
            .job(*id)
            .await?
            .map_or("missing".to_string(), |j| j.state.to_string());
        *states.entry(state).or_default() += 1;
    }
    let config = worker_config(concurrency, args.prefetch, args.lease_ms, args.rescue_ms);
    let mut out = fields(json!({
        "n": n,
        "concurrency": concurrency,
        "max_prefetch": args.prefetch.unwrap_or(4 * concurrency),
        "enqueue_jobs_per_s": per_s(n, enqueue_busy),
        "drain_jobs_per_s": last_done_us.and_then(|t| {
            let s = (t - enqueued_us) as f64 / 1e6;
            (s > 0.0).then(|| round3(n as f64 / s))
        }),
    }));
    out.append(&mut fields(latency_fields(latencies)));
    out.append(&mut fields(json!({
        "latency": "enqueue call -> start of the completed attempt (includes the lease expiry for re-run jobs)",
        "lost": lost,
        "duplicated": duplicated,
        "recovery_s": recovery_s,
        "sleep_ms": ms,
        "running_at_kill": running_at_kill,
        "completed_before_kill": completed_before_kill,
        "rerun_attempts_completed": rerun,
        "handler_completions": completions.len(),
        "unfinished_after": unfinished,
        "job_states": states,
        "lease_ms": config.lease.as_millis() as u64,
        "heartbeat_ms": config.heartbeat_every.as_millis() as u64,
        "rescue_ms": config.rescue_every.as_millis() as u64,
        "kill_after_ms": args.kill_after_ms,
    })));
    Ok(out)
}

/// A worker in another process than the producer (the `worker` child): one job per enqueue call
/// at --rate; enqueue→start latency from the child's durable completions, and the child's CPU
/// while it waits with nothing to do (a hot poll would show there).
async fn wake(args: &RunArgs, env: &Env) -> Result<Fields> {
    let rate = args.rate.max(1) as u64;
    let n = args.jobs.unwrap_or(5_000);
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(60);
    let backend = env.open(args.max_conns).await?;
    let store = Store::connect(env.kind, &env.url, &env.prefix).await?;
    store.init().await?;
    if args.no_doorbell {
        let database = env
            .url
            .strip_prefix("sqlite://")
            .context("--no-doorbell is for SQLite")?;
        // The producer's queue (opened above) has its bell already; the child's cannot bind one.
        let bells = format!("{database}.doorbells");
        std::fs::remove_dir_all(&bells)?;
        std::fs::write(&bells, b"")?;
    }
    let child = Child::spawn(args, env, concurrency)?;
    let pid = child.process.id().context("the worker child has no pid")?.to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = Duration::from_secs(5);
    let idle_from = process_cpu_s(&pid);
    tokio::time::sleep(idle).await;
    let idle_cpu_percent = idle_from
        .zip(process_cpu_s(&pid))
        .map(|(from, to)| round3((to - from) / idle.as_secs_f64() * 100.0));

    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let produce_start = Instant::now();
    for i in 0..n {
        interval.tick().await;
        let payload = Payload { i, t: now_us(), ms: 0 };
        backend.enqueue(vec![job(NOOP, "loadtest", payload)]).await?;
    }
    let produced = produce_start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    let completions = loop {
        let all = retrying("reading completions", || store.all()).await?;
        if all.len() >= n || Instant::now() >= deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().await?;
    store.close().await;
    if let Some(database) = env.url.strip_prefix("sqlite://") {
        let bells = std::path::PathBuf::from(format!("{database}.doorbells"));
        let _ = std::fs::remove_dir_all(&bells).or_else(|_| std::fs::remove_file(&bells));
    }
    let latencies = completions
        .iter()
        .map(|c| c.latency_us.max(0) as f64 / 1000.0)
        .collect();
    let mut out = fields(json!({
        "n": n,
        "target_rate": rate,
        "enqueue_jobs_per_s": per_s(n, produced),
        "completed": completions.len(),
        "worker_idle_cpu_percent": idle_cpu_percent,
        "doorbell": !args.no_doorbell,
    }));
    out.append(&mut fields(latency_fields(latencies)));
    out.append(&mut fields(json!({
        "latency": "enqueue call (wall time in payload) -> handler start in another process",
    })));
    Ok(out)
}

/// The hidden `worker` subcommand: a worker that records each handler completion durably, until
/// SIGTERM/SIGINT (graceful) or SIGKILL.
pub async fn child_worker(args: ChildArgs) -> Result<()> {
    let backend = open_backend(args.backend, &args.url, &args.prefix, args.max_conns).await?;
    let store = Store::connect(args.backend, &args.url, &args.prefix).await?;
    let config = worker_config(args.concurrency, args.prefetch, args.lease_ms, args.rescue_ms);
    let worker = Worker::new(backend, registry(None, Some(store)), config);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        token.cancel();
    });
    worker.run(shutdown).await?;
    Ok(())
}
