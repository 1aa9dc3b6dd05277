//! Runs the built `loadtest soak`, `drain --workers 2` and `skew` at a tiny size on PostgreSQL and
//! SQLite and checks their JSON lines: the fields the benchmarks report are there, and no job was
//! lost or completed twice. No timing is asserted (benchmarks are programs, not tests).
//!
//! The PostgreSQL cases need a server at postgres://postgres@127.0.0.1:5432 (or `LOADTEST_PG_URL`)
//! and are skipped, with a message, when it does not answer.

mod common;

use common::{reachable, run};
use serde_json::Value;

fn postgres() -> Option<String> {
    let url = std::env::var("LOADTEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    reachable(&url, 5432).then_some(url)
}

fn lossless(result: &Value, backend: &str, workload: &str) {
    assert_eq!(result["system"], format!("roundhouse-{backend}"), "{result}");
    assert_eq!(result["workload"], workload, "{result}");
    assert_eq!(result["lost"], 0, "jobs lost: {result}");
    assert_eq!(result["duplicated"], 0, "jobs run twice: {result}");
}

fn soak(backend: &str, url: Option<&str>) {
    let args = [
        "--jobs",
        "3000",
        "--duration-s",
        "2",
        "--rate",
        "200",
        "--chunk",
        "1000",
    ];
    let result = run("soak", backend, url, &args);
    lossless(&result, backend, "soak");
    assert_eq!(result["backlog"], 3000, "{result}");
    let fresh = result["fresh"].as_u64().expect("fresh");
    assert!(fresh > 0, "no fresh job was enqueued: {result}");
    for priority in ["high", "normal"] {
        let all = &result["fresh_by_priority"][priority]["all"];
        assert!(all["n"].as_u64().expect("n") > 0, "{priority}: {result}");
        assert!(all["p99_ms"].is_number(), "{priority}: {result}");
    }
    // Everything is accounted for: done, or still waiting in the queue.
    let done = &result["done_in_window"];
    assert!(
        done["backlog"].as_u64().is_some() && done["fresh"].as_u64().is_some(),
        "{result}"
    );
    assert!(result["backlog_left_at_end"].as_u64().is_some(), "{result}");
    assert!(result["jobs_per_s"].is_number(), "{result}");
    assert!(
        result["sizes_before"].is_object() && result["sizes_after"].is_object(),
        "{result}"
    );
    assert!(result["timeline"].is_array(), "{result}");
}

#[test]
fn soak_on_sqlite_reports_latency_by_priority_and_loses_nothing() {
    soak("sqlite", None);
    let result = run(
        "soak",
        "sqlite",
        None,
        &["--jobs", "500", "--duration-s", "1", "--rate", "100"],
    );
    assert!(
        result["sizes_after"]["db_bytes"].as_u64().expect("db_bytes") > 0,
        "{result}"
    );
}

#[test]
fn soak_on_postgres_reports_sizes_and_database_cpu() {
    let Some(url) = postgres() else { return };
    soak("postgres", Some(&url));
    let result = run(
        "soak",
        "postgres",
        Some(&url),
        &["--jobs", "500", "--duration-s", "1", "--rate", "100"],
    );
    let sizes = &result["sizes_after"];
    assert!(sizes["jobs_total_bytes"].as_u64().expect("total") > 0, "{result}");
    assert!(
        !sizes["index_bytes"].as_object().expect("index_bytes").is_empty(),
        "{result}"
    );
    assert!(result.get("db_cpu_s").is_some(), "{result}");
}

fn drain_workers(backend: &str, url: Option<&str>) {
    let result = run("drain", backend, url, &["--jobs", "2000", "--workers", "2"]);
    lossless(&result, backend, "drain");
    assert_eq!(result["workers"], 2, "{result}");
    assert_eq!(result["unfinished_after"], 0, "{result}");
    assert_eq!(result["handler_runs"], 2000, "{result}");
    assert!(result["drain_jobs_per_s"].is_number(), "{result}");
    assert!(result["claim_calls"].as_u64().expect("claim_calls") > 0, "{result}");
    assert_eq!(
        result["per_worker"].as_array().expect("per_worker").len(),
        2,
        "{result}"
    );
}

#[test]
fn drain_with_two_worker_processes_on_sqlite_loses_nothing() {
    drain_workers("sqlite", None);
}

#[test]
fn drain_with_two_worker_processes_on_postgres_loses_nothing() {
    let Some(url) = postgres() else { return };
    drain_workers("postgres", Some(&url));
}

fn skew(backend: &str, url: Option<&str>) {
    let result = run(
        "skew",
        backend,
        url,
        &["--jobs", "4000", "--projects", "50", "--rate", "1000"],
    );
    lossless(&result, backend, "skew");
    assert_eq!(result["projects"], 50, "{result}");
    assert_eq!(result["big_jobs"], 3600, "{result}");
    assert_eq!(result["unfinished_after"], 0, "{result}");
    assert!(result["small"]["n"].as_u64().expect("small n") > 0, "{result}");
    assert!(result["big_jobs_per_s"].is_number(), "{result}");
}

#[test]
fn skew_on_sqlite_loses_nothing() {
    skew("sqlite", None);
}

#[test]
fn skew_on_postgres_loses_nothing() {
    let Some(url) = postgres() else { return };
    skew("postgres", Some(&url));
}
