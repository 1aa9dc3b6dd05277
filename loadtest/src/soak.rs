//! `loadtest soak`: a steady state on top of a deep backlog (issue 21). N (1,000,000) jobs wait
//! at a low priority; then for --duration-s (600) fresh jobs arrive one per enqueue call at --rate
//! (500/s), alternating between a high and the normal priority, while one worker (concurrency 32)
//! works everything. Reports the throughput, the fresh jobs' enqueue→start latency per priority,
//! the backlog left, the queue's storage before and after, and the database's CPU per job.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use enclii_queue::NewJob;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::RunArgs;
use crate::dbstats::{DbCpu, autovacuum, cpu_fields, sizes};
use crate::env::Env;
use crate::meter::{UNFINISHED, count_in, now_us, percentiles, process_cpu_s, round3};
use crate::track::{Track, paced, stamped, start_worker, summary};
use crate::workloads::{Fields, fields, job_shape};

/// The backlog's priority (lower runs first; 5 is the default).
pub const BACKLOG_PRIORITY: i16 = 9;
/// The fresh jobs' priorities, taken in turn.
pub const FRESH: [(&str, i16); 2] = [("high", 0), ("normal", 5)];

pub async fn soak(args: &RunArgs, env: &Env) -> Result<Fields> {
    let backlog = args.jobs.unwrap_or(1_000_000);
    let duration = Duration::from_secs(args.duration_s.unwrap_or(600));
    let rate = u64::from(args.rate.max(1));
    let concurrency = args.concurrency.unwrap_or(32);
    let deadline_s = args.deadline_s.unwrap_or(120);
    let (kind, ms) = job_shape(args);
    // Room for every fresh job the producer can make, with slack for a late tick.
    let fresh_cap = (rate as f64 * duration.as_secs_f64() * 1.05) as usize + 64;
    let track = Track::new(backlog, backlog + fresh_cap);
    let backend = env.open(args.max_conns).await?;

    // The backlog, in bulk calls built one at a time (a million jobs at once is a lot of memory).
    let fill_start = Instant::now();
    let chunk = args.chunk.max(1);
    for from in (0..backlog).step_by(chunk) {
        let jobs: Vec<NewJob> = (from..(from + chunk).min(backlog))
            .map(|i| stamped(kind, "loadtest", i, ms, BACKLOG_PRIORITY))
            .collect();
        backend.enqueue(jobs).await.context("enqueueing the backlog")?;
    }
    let fill = fill_start.elapsed();
    let sizes_before = sizes(env).await?;
    let db = DbCpu::find(env).await;

    let (meter, shutdown, worker) = start_worker(&backend, &track, concurrency, args);
    let db_from = db.cpu_s();
    let load_from = process_cpu_s("self");
    let window_start = Instant::now();
    let window_start_us = now_us();

    // Every 10 s (or a tenth of a short run): how much of the backlog is left, jobs done since.
    let every = (duration / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (track, sampling) = (track.clone(), sampling.clone());
        async move {
            let mut samples = Vec::new();
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = sampling.cancelled() => return samples,
                    _ = tokio::time::sleep(every) => {}
                }
                let [old, new] = track.done();
                samples.push(json!({
                    "t_s": round3(window_start.elapsed().as_secs_f64()),
                    "backlog_left": backlog as u64 - old.min(backlog as u64),
                    "jobs_per_s": round3((old + new - last) as f64 / every.as_secs_f64()),
                }));
                last = old + new;
            }
        }
    });

    let produced = paced(
        &backend,
        rate,
        |k, elapsed| elapsed >= duration || k >= fresh_cap,
        |k| stamped(kind, "loadtest", backlog + k, ms, FRESH[k % FRESH.len()].1),
    )
    .await;
    let window = window_start.elapsed();
    let [old_done, new_done] = track.done();
    let db_to = db.cpu_s();
    let load_to = process_cpu_s("self");
    sampling.cancel();
    let timeline = sampler.await.unwrap_or_default();
    let produced = match produced {
        Ok(p) => p,
        Err(e) => {
            shutdown.cancel();
            let _ = worker.await;
            return Err(e.context("during the soak"));
        }
    };
    let fresh = produced.jobs;

    // Let every fresh job run (the backlog may stay), then stop the worker gracefully.
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while track.done()[1] < fresh as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    worker.await.context("worker task panicked")??;
    let unfinished = count_in(&*backend, &UNFINISHED).await?;
    let sizes_after = sizes(env).await?;

    let (backlog_never, backlog_twice) = track.lost_duplicated(0..backlog);
    let (fresh_never, fresh_twice) = track.lost_duplicated(backlog..backlog + fresh);
    // A job is lost if it neither completed nor waits in the queue.
    let lost = (backlog_never + fresh_never) as i64 - unfinished as i64;
    let backlog_empty_us = (backlog_never == 0)
        .then(|| track.span_us(0..backlog).map(|(_, last)| last))
        .flatten();
    let mut by_priority = serde_json::Map::new();
    for (p, (name, _)) in FRESH.iter().enumerate() {
        let of_p = |i: usize| (i - backlog) % FRESH.len() == p;
        let all = track.latencies_ms(backlog..backlog + fresh, |i, _| of_p(i));
        let deep = track.latencies_ms(backlog..backlog + fresh, |i, t| {
            of_p(i) && backlog_empty_us.is_none_or(|empty| t < empty)
        });
        by_priority.insert(
            (*name).into(),
            json!({ "all": summary(all), "while_backlog_waits": summary(deep) }),
        );
    }
    let [p50, _, p99, max] = percentiles(track.latencies_ms(backlog..backlog + fresh, |_, _| true));
    let [c50, _, c99, cmax] = percentiles(produced.call_ms);
    let done_in_window = old_done + new_done;
    let window_s = window.as_secs_f64();
    let mut out = fields(json!({
        "n": backlog + fresh,
        "concurrency": concurrency,
        "backlog": backlog,
        "fresh": fresh,
        "duration_s": round3(window_s),
        "target_rate": rate,
        "enqueue_jobs_per_s": round3(fresh as f64 / produced.elapsed.as_secs_f64().max(1e-9)),
        "jobs_per_s": round3(done_in_window as f64 / window_s.max(1e-9)),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "latency": "fresh jobs: enqueue call (wall time in payload) -> handler start",
        "fresh_by_priority": by_priority,
        "priorities": { "backlog": BACKLOG_PRIORITY, "high": FRESH[0].1, "normal": FRESH[1].1 },
        "done_in_window": { "backlog": old_done, "fresh": new_done },
        "backlog_left_at_end": backlog as u64 - old_done.min(backlog as u64),
        "backlog_empty_s": backlog_empty_us.map(|t| round3((t - window_start_us) as f64 / 1e6)),
        "backlog_fill_s": round3(fill.as_secs_f64()),
        "lost": lost,
        "duplicated": backlog_twice + fresh_twice,
        "unfinished_after": unfinished,
        "sizes_before": sizes_before,
        "sizes_after": sizes_after,
        "autovacuum": autovacuum(env).await,
        "enqueue_call_p50_ms": c50,
        "enqueue_call_p99_ms": c99,
        "enqueue_call_max_ms": cmax,
        "timeline": timeline,
        "worker": meter.summary(),
    }));
    out.append(&mut fields(cpu_fields("db", db_from, db_to, done_in_window, window_s)));
    out.append(&mut fields(cpu_fields(
        "loadgen",
        load_from,
        load_to,
        done_in_window,
        window_s,
    )));
    Ok(out)
}
