//! Runs the built `loadtest crash` against SQLite and PostgreSQL with a short lease and checks that
//! a worker killed with SIGKILL mid-flight loses no job and runs none twice to completion.
//!
//! The PostgreSQL case needs a server at postgres://postgres@127.0.0.1:5432 (or `LOADTEST_PG_URL`),
//! the Redis case one at redis://127.0.0.1:6379 (or `LOADTEST_REDIS_URL`); each is skipped, with a
//! message, when its server does not answer.

mod common;

use common::{reachable, run};
use serde_json::Value;

fn crash(backend: &str, url: Option<&str>) -> Value {
    run(
        "crash",
        backend,
        url,
        &[
            "--jobs",
            "16",
            "--lease-ms",
            "2000",
            "--rescue-ms",
            "250",
            "--deadline-s",
            "20",
        ],
    )
}

fn check(result: &Value, backend: &str) {
    assert_eq!(result["system"], format!("roundhouse-{backend}"), "{result}");
    assert_eq!(result["workload"], "crash", "{result}");
    assert_eq!(result["n"], 16, "{result}");
    assert_eq!(result["lost"], 0, "jobs lost after the kill: {result}");
    assert_eq!(result["duplicated"], 0, "jobs completed twice: {result}");
}

#[test]
fn crash_recovery_on_sqlite_loses_and_duplicates_nothing() {
    check(&crash("sqlite", None), "sqlite");
}

#[test]
fn crash_recovery_on_postgres_loses_and_duplicates_nothing() {
    let url = std::env::var("LOADTEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if reachable(&url, 5432) {
        check(&crash("postgres", Some(&url)), "postgres");
    }
}

#[test]
fn crash_recovery_on_redis_loses_and_duplicates_nothing() {
    let url = std::env::var("LOADTEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if reachable(&url, 6379) {
        check(&crash("redis", Some(&url)), "redis");
    }
}
