//! For the long workloads (`soak`, `skew`): a per-job record of when each job started and
//! finished, split in two groups by position (the backlog and the fresh jobs; the big project and
//! the small ones), and a producer that enqueues one job per call at a fixed rate.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;
use enclii_queue::{Backend, NewJob};
use enclii_worker::{Handler, JobContext, JobError, Registry};
use serde_json::{Value, json};

use crate::meter::{NOOP, Payload, SLEEP, now_us, percentiles};

const NEVER: i64 = i64::MIN;

/// Positions `0..split` are group 0, the rest group 1.
pub struct Track {
    split: usize,
    runs: Vec<AtomicU32>,
    /// Wall time of the first start, µs since the epoch.
    start_us: Vec<AtomicI64>,
    /// Enqueue→first start, µs.
    latency_us: Vec<AtomicI64>,
    /// Wall time of the last completion, µs since the epoch.
    done_us: Vec<AtomicI64>,
    done: [AtomicU64; 2],
}

impl Track {
    pub fn new(split: usize, n: usize) -> Arc<Track> {
        let column = || (0..n).map(|_| AtomicI64::new(NEVER)).collect::<Vec<_>>();
        Arc::new(Track {
            split,
            runs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            start_us: column(),
            latency_us: column(),
            done_us: column(),
            done: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn started(&self, p: &Payload) {
        let now = now_us();
        if let Some(slot) = self.start_us.get(p.i)
            && slot
                .compare_exchange(NEVER, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.latency_us[p.i].store(now - p.t, Ordering::Relaxed);
        }
    }

    fn finished(&self, p: &Payload) {
        if let Some(runs) = self.runs.get(p.i) {
            runs.fetch_add(1, Ordering::Relaxed);
            self.done_us[p.i].fetch_max(now_us(), Ordering::Relaxed);
            self.done[usize::from(p.i >= self.split)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handler completions so far in group 0 and group 1 (repeats included).
    pub fn done(&self) -> [u64; 2] {
        [
            self.done[0].load(Ordering::Relaxed),
            self.done[1].load(Ordering::Relaxed),
        ]
    }

    /// Jobs in `range` never completed, and completed more than once.
    pub fn lost_duplicated(&self, range: std::ops::Range<usize>) -> (usize, usize) {
        let mut never = 0;
        let mut twice = 0;
        for runs in &self.runs[range] {
            match runs.load(Ordering::Relaxed) {
                0 => never += 1,
                1 => {}
                _ => twice += 1,
            }
        }
        (never, twice)
    }

    /// Enqueue→start latencies (ms) of the started jobs in `range` that `keep` accepts, given
    /// each job's position and enqueue time (µs since the epoch).
    pub fn latencies_ms(&self, range: std::ops::Range<usize>, keep: impl Fn(usize, i64) -> bool) -> Vec<f64> {
        range
            .filter_map(|i| {
                let latency = self.latency_us[i].load(Ordering::Relaxed);
                if latency == NEVER {
                    return None;
                }
                let enqueued = self.start_us[i].load(Ordering::Relaxed) - latency;
                keep(i, enqueued).then(|| latency.max(0) as f64 / 1000.0)
            })
            .collect()
    }

    /// The last first-start among the jobs in `range`: until then, some of them still waited.
    pub fn last_start_us(&self, range: std::ops::Range<usize>) -> Option<i64> {
        range
            .map(|i| self.start_us[i].load(Ordering::Relaxed))
            .filter(|&t| t != NEVER)
            .max()
    }

    /// First start and last completion (µs since the epoch) among the jobs in `range`.
    pub fn span_us(&self, range: std::ops::Range<usize>) -> Option<(i64, i64)> {
        let first = range
            .clone()
            .map(|i| self.start_us[i].load(Ordering::Relaxed))
            .filter(|&t| t != NEVER)
            .min()?;
        let last = range
            .map(|i| self.done_us[i].load(Ordering::Relaxed))
            .filter(|&t| t != NEVER)
            .max()?;
        Some((first, last))
    }
}

/// `bench.noop` and `bench.sleep` recording into a [`Track`].
#[derive(Clone)]
struct Tracked(Arc<Track>);

#[async_trait]
impl Handler for Tracked {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let p: Payload = ctx.payload()?;
        self.0.started(&p);
        if ctx.job.kind == SLEEP && p.ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
        }
        self.0.finished(&p);
        Ok(())
    }
}

/// A worker in this process running `track`'s jobs on a metered view of `backend`: its meter,
/// the token that stops it, and its task.
pub fn start_worker(
    backend: &Arc<dyn enclii_queue::Backend>,
    track: &Arc<Track>,
    concurrency: usize,
    args: &crate::RunArgs,
) -> (
    Arc<crate::meter::Meter>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), enclii_worker::WorkerError>>,
) {
    let meter = crate::meter::Meter::new(std::time::Instant::now());
    let metered: Arc<dyn enclii_queue::Backend> = Arc::new(crate::meter::Metered {
        inner: backend.clone(),
        meter: meter.clone(),
    });
    let config = crate::worker_config(concurrency, args.prefetch, args.lease_ms, args.rescue_ms);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(enclii_worker::Worker::new(metered, registry(track), config).run(shutdown.clone()));
    (meter, shutdown, worker)
}

pub fn registry(track: &Arc<Track>) -> Registry {
    let mut registry = Registry::new();
    registry.register(NOOP, Tracked(track.clone()));
    registry.register(SLEEP, Tracked(track.clone()));
    registry
}

/// p50/p99/max and the count of a set of latencies.
pub fn summary(latencies_ms: Vec<f64>) -> Value {
    let n = latencies_ms.len();
    let [p50, _, p99, max] = percentiles(latencies_ms);
    json!({ "n": n, "p50_ms": p50, "p99_ms": p99, "max_ms": max })
}

/// What a paced producer did.
pub struct Produced {
    pub jobs: usize,
    pub elapsed: Duration,
    /// Enqueue call durations, ms.
    pub call_ms: Vec<f64>,
}

/// Enqueues job `k = 0, 1, …` (made by `make`, which stamps the enqueue time) one per call at
/// `rate` per second until `stop(k, elapsed)` says so. Calls run concurrently (up to 256
/// outstanding), so that a slow call does not slow the producer.
pub async fn paced(
    backend: &Arc<dyn Backend>,
    rate: u64,
    mut stop: impl FnMut(usize, Duration) -> bool,
    mut make: impl FnMut(usize) -> NewJob,
) -> Result<Produced> {
    let rate = rate.max(1);
    let per_tick = (rate * 2 / 1000).max(1);
    let tick = Duration::from_micros(per_tick * 1_000_000 / rate);
    let outstanding = Arc::new(tokio::sync::Semaphore::new(256));
    let call_ms = Arc::new(Mutex::new(Vec::new()));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut k = 0;
    'produce: loop {
        interval.tick().await;
        for _ in 0..per_tick {
            if stop(k, started.elapsed()) {
                break 'produce;
            }
            let permit = outstanding.clone().acquire_owned().await.expect("never closed");
            let (backend, call_ms, failure) = (backend.clone(), call_ms.clone(), failure.clone());
            let job = make(k);
            tokio::spawn(async move {
                let at = Instant::now();
                match backend.enqueue(vec![job]).await {
                    Ok(_) => call_ms
                        .lock()
                        .expect("call_ms")
                        .push(at.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failure.lock().expect("failure").get_or_insert(e.to_string());
                    }
                }
                drop(permit);
            });
            k += 1;
        }
        if failure.lock().expect("failure").is_some() {
            break;
        }
    }
    let _all = outstanding.acquire_many(256).await.expect("never closed");
    let elapsed = started.elapsed();
    if let Some(e) = failure.lock().expect("failure").take() {
        bail!("an enqueue call failed: {e}");
    }
    let call_ms = std::mem::take(&mut *call_ms.lock().expect("call_ms"));
    Ok(Produced {
        jobs: k,
        elapsed,
        call_ms,
    })
}

/// Job `i` of the run: `kind` with `ms` of sleep, stamped with the enqueue time now.
pub fn stamped(kind: &str, project: &str, i: usize, ms: u64, priority: i16) -> NewJob {
    crate::meter::job(kind, project, Payload { i, t: now_us(), ms }).with_priority(priority)
}
