//! `chaos`'s API prober (GET /health/ready and GET /v1/projects every 100 ms) and its report per
//! phase: steady, and each fault's window.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::chaos::Http;
use crate::chaos_faults::Fault;
use crate::meter::{percentiles, round3};

/// One probe answer: seconds since the start, which endpoint, answered 200, latency.
#[derive(Clone, Copy)]
pub struct Probe {
    at_s: f64,
    ready: bool,
    ok: bool,
    ms: f64,
}

pub async fn prober(http: Http, start: Instant, stop: CancellationToken) -> Vec<Probe> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        tick.tick().await;
        for (ready, path) in [(true, "/health/ready"), (false, "/v1/projects")] {
            let (http, out) = (http.clone(), out.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                let at_s = start.elapsed().as_secs_f64();
                let result = http.send("GET", path, &[], None, Duration::from_secs(5)).await;
                let ok = matches!(result, Ok((200, _)));
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                out.lock().unwrap().push(Probe { at_s, ready, ok, ms });
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *out.lock().unwrap())
}

/// Error rate and latency per phase: `steady` (outside every fault window) and each fault.
pub fn phases(probes: &[Probe], faults: &[Fault]) -> Vec<Value> {
    let mut names: Vec<(String, f64, f64)> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("{}#{}", f.fault, i + 1), f.start_s, f.end_s))
        .collect();
    names.insert(0, ("steady".into(), 0.0, 0.0));
    let mut out = Vec::new();
    for (i, (name, from, to)) in names.iter().enumerate() {
        for ready in [true, false] {
            let in_phase: Vec<&Probe> = probes
                .iter()
                .filter(|p| p.ready == ready)
                .filter(|p| match i {
                    0 => !faults.iter().any(|f| p.at_s >= f.start_s && p.at_s < f.end_s),
                    _ => p.at_s >= *from && p.at_s < *to,
                })
                .collect();
            let n = in_phase.len();
            let errors = in_phase.iter().filter(|p| !p.ok).count();
            let [p50, _, p99, max] = percentiles(in_phase.iter().map(|p| p.ms).collect());
            out.push(json!({
                "chaos": "phase", "phase": name,
                "endpoint": if ready { "GET /health/ready" } else { "GET /v1/projects" },
                "requests": n, "errors": errors,
                "error_rate": if n > 0 { round3(errors as f64 / n as f64) } else { 0.0 },
                "p50_ms": p50, "p99_ms": p99, "max_ms": max,
            }));
        }
    }
    out
}

pub fn human_summary(summary: &Value, faults: &[Fault], probes: &[Probe], checks: &[Value]) {
    eprintln!("\n== chaos summary ==");
    eprintln!(
        "queue {} · {} services · {} workers · {} deliveries sent ({} planned for the storm, {} to built services), {} accepted, {} redelivered · drained: {}",
        summary["queue"],
        summary["services"],
        summary["workers"],
        summary["deliveries_sent"],
        summary["deliveries_planned"],
        summary["built_pushes"],
        summary["accepted"],
        summary["redelivered"],
        summary["drained_after_s"]
    );
    eprintln!(
        "webhook answer (first send → last answer) p50 {} ms, p99 {} ms, max {} ms",
        summary["webhook_p50_ms"], summary["webhook_p99_ms"], summary["webhook_max_ms"]
    );
    for f in faults {
        eprintln!("fault {:>16} at {:6.1}s ({}) {}", f.fault, f.start_s, f.target, f.note);
    }
    for p in phases(probes, faults) {
        eprintln!(
            "probe {:>18} {:18} n={:<5} errors={:<4} p99={} ms",
            p["phase"].as_str().unwrap_or(""),
            p["endpoint"].as_str().unwrap_or(""),
            p["requests"],
            p["errors"],
            p["p99_ms"]
        );
    }
    for c in checks {
        let verdict = match &c["ok"] {
            Value::Bool(true) => "PASS",
            Value::Bool(false) => "FAIL",
            _ => "n/a ",
        };
        eprintln!("{verdict} {}: {}", c["name"].as_str().unwrap_or(""), c["detail"]);
    }
    eprintln!("result: {}", if summary["ok"] == json!(true) { "OK" } else { "FAILED" });
}
