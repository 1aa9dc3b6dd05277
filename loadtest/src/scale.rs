//! Scale-out and skew (issue 21): `loadtest drain --workers K` drains a backlog with K worker
//! *processes*, and `loadtest skew` puts 90% of the backlog in one project while a thousand
//! others get a few jobs each over time.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use enclii_queue::Backend;
use enclii_worker::{Handler, JobContext, JobError, Registry, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::dbstats::{DbCpu, autovacuum, cpu_fields};
use crate::env::{Env, open_backend};
use crate::meter::{Meter, Metered, NOOP, Payload, SLEEP, UNFINISHED, count_in, now_us, process_cpu_s, round3};
use crate::track::{Track, paced, stamped, start_worker, summary};
use crate::workloads::{Fields, build_chunks, enqueue_chunks, fields, job_shape, this_binary};
use crate::{ChildArgs, RunArgs, worker_config};

/// A handler that only counts its runs and keeps their positions in memory (and sleeps for
/// `bench.sleep`): nothing durable, so that the queue, not the recording, is what the drain
/// measures. The positions are written to a file when the worker stops.
#[derive(Clone)]
struct Count {
    runs: Arc<AtomicU64>,
    positions: Arc<Mutex<Vec<u32>>>,
}

#[async_trait]
impl Handler for Count {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let p: Payload = ctx.payload()?;
        if ctx.job.kind == SLEEP && p.ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
        }
        self.positions.lock().expect("positions").push(p.i as u32);
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The hidden `worker --report` child of `drain --workers K`: runs jobs without recording them and
/// prints a progress line (JSON) every 100 ms and once more when it stops: handler runs,
/// acknowledged completions, the wall times of its first claim and last acknowledgement, its CPU
/// and its claim/ack statistics.
pub async fn report_worker(args: ChildArgs) -> Result<()> {
    let backend = open_backend(args.backend, &args.url, &args.prefix, args.max_conns).await?;
    let (base, base_us) = (Instant::now(), now_us());
    let meter = Meter::new(base);
    let metered: Arc<dyn Backend> = Arc::new(Metered {
        inner: backend,
        meter: meter.clone(),
    });
    let runs = Arc::new(AtomicU64::new(0));
    let count = Count {
        runs: runs.clone(),
        positions: Arc::new(Mutex::new(Vec::new())),
    };
    let mut registry = Registry::new();
    registry.register(NOOP, count.clone());
    registry.register(SLEEP, count.clone());
    let config = worker_config(args.concurrency, args.prefetch, args.lease_ms, args.rescue_ms);
    let worker = Worker::new(metered, registry, config);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        token.cancel();
    });
    let report = {
        let (meter, runs) = (meter.clone(), runs.clone());
        move || {
            let at = |d: Option<Duration>| d.map(|d| base_us + d.as_micros() as i64);
            let line = json!({
                "runs": runs.load(Ordering::Relaxed),
                "acked": meter.acked_completed.load(Ordering::Relaxed),
                "first_claim_us": at(meter.first_claim()),
                "last_ack_us": at(meter.last_ack()),
                "cpu_s": process_cpu_s("self"),
                "worker": meter.summary(),
            });
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    };
    let reporter = tokio::spawn({
        let (report, shutdown) = (report.clone(), shutdown.clone());
        async move {
            while !shutdown.is_cancelled() {
                report();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let result = worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = reporter.await;
    if let Some(path) = &args.runs_file {
        let positions = std::mem::take(&mut *count.positions.lock().expect("positions"));
        let text: String = positions.iter().map(|i| format!("{i}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    report();
    Ok(result?)
}

/// A `worker --report` child and its latest progress line.
struct Reporter {
    process: std::process::Child,
    latest: Arc<Mutex<Value>>,
    runs_file: std::path::PathBuf,
}

impl Reporter {
    fn spawn(args: &RunArgs, env: &Env, concurrency: usize) -> Result<Reporter> {
        let runs_file = std::env::temp_dir().join(format!("loadtest-runs-{:08x}", rand::random::<u32>()));
        let mut command = std::process::Command::new(this_binary()?);
        command
            .args(["worker", "--report", "--backend", env.kind.as_str(), "--url", &env.url])
            .arg("--runs-file")
            .arg(&runs_file)
            .args(["--prefix", &env.prefix, "--concurrency", &concurrency.to_string()])
            .args(["--max-conns", &args.max_conns.to_string()]);
        if let Some(n) = args.prefetch {
            command.args(["--prefetch", &n.to_string()]);
        }
        let mut process = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        let stdout = process.stdout.take().context("the worker's stdout")?;
        let latest = Arc::new(Mutex::new(Value::Null));
        let slot = latest.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    *slot.lock().expect("latest") = value;
                }
            }
        });
        Ok(Reporter {
            process,
            latest,
            runs_file,
        })
    }

    fn latest(&self) -> Value {
        self.latest.lock().expect("latest").clone()
    }

    fn pid(&self) -> String {
        self.process.id().to_string()
    }

    /// SIGTERM (a graceful stop: the child writes the positions it ran and prints its last line),
    /// then SIGKILL after 10 s. Returns the last line and the positions.
    fn stop(mut self) -> (Value, Vec<usize>) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid()]).status();
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        // The reader thread ends with the pipe; give it a moment to take the last line.
        std::thread::sleep(Duration::from_millis(50));
        let positions = std::fs::read_to_string(&self.runs_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        (self.latest(), positions)
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.runs_file);
    }
}

fn number(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// `drain --workers K`: the backlog is enqueued in bulk, then K worker processes (each with
/// --concurrency slots) drain it. Throughput = jobs / (first claim → last acknowledgement over all
/// processes); the database's and the workers' CPU over the same window show what saturates.
pub async fn drain_workers(args: &RunArgs, env: &Env, workers: usize) -> Result<Fields> {
    let n = args.jobs.unwrap_or(20_000);
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let (kind, ms) = job_shape(args);
    let backend = env.open(args.max_conns).await?;
    let chunks = build_chunks(kind, "loadtest", 0..n, args.chunk, ms);
    let (enqueue_busy, _) = enqueue_chunks(&*backend, chunks).await?;
    let db = DbCpu::find(env).await;

    let db_from = db.cpu_s();
    let started = Instant::now();
    let mut children = Vec::with_capacity(workers);
    for _ in 0..workers {
        children.push(Reporter::spawn(args, env, concurrency)?);
    }
    let deadline = started + Duration::from_secs(deadline_s);
    loop {
        let acked: u64 = children.iter().map(|c| number(&c.latest(), "acked")).sum();
        if acked >= n as u64 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Acknowledgements of jobs run twice count too: the queue says when none is left.
    while count_in(&*backend, &UNFINISHED).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db_to = db.cpu_s();
    let wall = started.elapsed();
    let worker_cpu: Vec<Option<f64>> = children.iter().map(|c| process_cpu_s(&c.pid())).collect();
    let mut reports = Vec::with_capacity(workers);
    let mut ran = vec![0u32; n];
    for child in children {
        let (report, positions) = child.stop();
        for i in positions {
            if let Some(r) = ran.get_mut(i) {
                *r += 1;
            }
        }
        reports.push(report);
    }
    let unfinished = count_in(&*backend, &UNFINISHED).await?;
    let lost = ran.iter().filter(|&&r| r == 0).count();
    let duplicated = ran.iter().filter(|&&r| r > 1).count();
    let runs: u64 = reports.iter().map(|r| number(r, "runs")).sum();
    let first = reports.iter().filter_map(|r| r["first_claim_us"].as_i64()).min();
    let last = reports.iter().filter_map(|r| r["last_ack_us"].as_i64()).max();
    let drain_s = first.zip(last).map(|(a, b)| (b - a) as f64 / 1e6);
    let claim_calls: u64 = reports.iter().map(|r| number(&r["worker"], "claim_calls")).sum();
    let claim_busy: f64 = reports
        .iter()
        .filter_map(|r| r["worker"]["claim_busy_s"].as_f64())
        .sum();
    let workers_cpu = worker_cpu.iter().copied().sum::<Option<f64>>();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = fields(json!({
        "n": n,
        "workers": workers,
        "concurrency": concurrency,
        "max_prefetch": args.prefetch.unwrap_or(4 * concurrency),
        "enqueue_jobs_per_s": round3(n as f64 / enqueue_busy.as_secs_f64().max(1e-9)),
        "drain_jobs_per_s": drain_s.filter(|s| *s > 0.0).map(|s| round3(n as f64 / s)),
        "drain_s": drain_s.map(round3),
        "wall_s": round3(wall.as_secs_f64()),
        "lost": lost,
        "duplicated": duplicated,
        "unfinished_after": unfinished,
        "handler_runs": runs,
        "claim_calls": claim_calls,
        "claims_per_job": round3(claim_calls as f64 / n.max(1) as f64),
        "claim_call_avg_ms": (claim_calls > 0).then(|| round3(claim_busy * 1000.0 / claim_calls as f64)),
        "workers_cpu_s": workers_cpu.map(round3),
        "workers_cpu_us_per_job": workers_cpu.map(|s| round3(s * 1e6 / n.max(1) as f64)),
        "workers_cpu_cores": workers_cpu.map(|s| round3(s / wall.as_secs_f64())),
        "machine_cores": cores,
        "autovacuum": autovacuum(env).await,
        "per_worker": reports.iter().map(|r| &r["worker"]).collect::<Vec<_>>(),
        "cpu_window": "db and workers: from starting the workers to the last acknowledgement (wall_s)",
    }));
    out.append(&mut fields(cpu_fields(
        "db",
        db_from,
        db_to,
        n as u64,
        wall.as_secs_f64(),
    )));
    Ok(out)
}

/// `skew`: one project ("big") holds 90% of N (200,000) jobs, enqueued in bulk; while it drains,
/// jobs of the other --projects − 1 (999) projects arrive one per call at --rate (500/s), round
/// robin, so each gets a few, until the big backlog is gone or they reach 10% of N. One worker
/// (concurrency 32) works everything. Reports the small projects' enqueue→start latency and the
/// big project's throughput.
pub async fn skew(args: &RunArgs, env: &Env) -> Result<Fields> {
    let n = args.jobs.unwrap_or(200_000).max(10);
    let small_projects = args.projects.max(2) - 1;
    let big = n * 9 / 10;
    let small_max = n - big;
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let (kind, ms) = job_shape(args);
    let track = Track::new(big, n);
    let backend = env.open(args.max_conns).await?;
    let chunks = build_chunks(kind, "big", 0..big, args.chunk, ms);
    let (enqueue_busy, _) = enqueue_chunks(&*backend, chunks).await?;
    let db = DbCpu::find(env).await;

    let (meter, shutdown, worker) = start_worker(&backend, &track, concurrency, args);
    let db_from = db.cpu_s();
    let started = Instant::now();
    let produced = paced(
        &backend,
        u64::from(args.rate),
        |k, _| k >= small_max || track.done()[0] >= big as u64,
        |k| {
            let project = format!("small-{:04}", k % small_projects);
            stamped(kind, &project, big + k, ms, enclii_queue::JobPolicy::default().priority)
        },
    )
    .await;
    let small = match produced {
        Ok(p) => p.jobs,
        Err(e) => {
            shutdown.cancel();
            let _ = worker.await;
            return Err(e.context("during the skew run"));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while (track.done()[0] < big as u64 || track.done()[1] < small as u64) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let db_to = db.cpu_s();
    let wall = started.elapsed();
    shutdown.cancel();
    worker.await.context("worker task panicked")??;
    let unfinished = count_in(&*backend, &UNFINISHED).await?;

    let (big_never, big_twice) = track.lost_duplicated(0..big);
    let (small_never, small_twice) = track.lost_duplicated(big..big + small);
    let big_span = track.span_us(0..big);
    let big_last_start = track.last_start_us(0..big);
    let small_all = track.latencies_ms(big..big + small, |_, _| true);
    let small_deep = track.latencies_ms(big..big + small, |_, t| big_last_start.is_some_and(|s| t < s));
    let big_s = big_span.map(|(a, b)| (b - a) as f64 / 1e6);
    let [p50, p99, max] = {
        let s = summary(small_all.clone());
        [s["p50_ms"].clone(), s["p99_ms"].clone(), s["max_ms"].clone()]
    };
    let mut out = fields(json!({
        "n": big + small,
        "concurrency": concurrency,
        "projects": small_projects + 1,
        "big_jobs": big,
        "small_jobs": small,
        "small_per_project": round3(small as f64 / small_projects as f64),
        "target_rate": args.rate,
        "enqueue_jobs_per_s": round3(big as f64 / enqueue_busy.as_secs_f64().max(1e-9)),
        "big_jobs_per_s": big_s.filter(|s| *s > 0.0).map(|s| round3(big as f64 / s)),
        "big_s": big_s.map(round3),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "latency": "small projects' jobs: enqueue call (wall time in payload) -> handler start",
        "small": summary(small_all),
        "small_while_big_waits": summary(small_deep),
        "lost": big_never + small_never,
        "duplicated": big_twice + small_twice,
        "unfinished_after": unfinished,
        "autovacuum": autovacuum(env).await,
        "worker": meter.summary(),
    }));
    let done = big as u64 + small as u64;
    out.append(&mut fields(cpu_fields("db", db_from, db_to, done, wall.as_secs_f64())));
    Ok(out)
}
