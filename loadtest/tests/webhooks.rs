//! Runs the built `loadtest webhooks` briefly on SQLite and PostgreSQL and checks that every signed
//! push was answered 202 and left its delivery, release, pipeline and jobs behind.
//!
//! The PostgreSQL case needs a server at postgres://postgres@127.0.0.1:5432 (or `LOADTEST_PG_URL`)
//! and is skipped, with a message, when none answers.

mod common;

use common::{reachable, run};
use serde_json::Value;

fn webhooks(backend: &str, url: Option<&str>) -> Value {
    run(
        "webhooks",
        backend,
        url,
        &[
            "--webhooks",
            "120",
            "--warmup",
            "20",
            "--concurrency",
            "8",
            "--repos",
            "4",
        ],
    )
}

fn check(result: &Value, backend: &str) {
    assert_eq!(result["system"], format!("enclii-{backend}"), "{result}");
    assert_eq!(result["workload"], "webhooks", "{result}");
    assert_eq!(result["n"], 120, "{result}");
    assert_eq!(result["non_202"], 0, "{result}");
    assert_eq!(result["warmup_non_202"], 0, "{result}");
    let rows = &result["rows"];
    assert_eq!(rows["webhook_deliveries"], 140, "{result}");
    assert_eq!(rows["releases"], 140, "{result}");
    assert_eq!(rows["pipelines"], 140, "{result}");
    assert_eq!(rows["jobs"], 140 * 6, "{result}");
    // Each push superseded the previous pipeline of its service: one live run per repository.
    assert_eq!(rows["pipelines_running"], 4, "{result}");
    assert_eq!(result["durable"], true, "{result}");
}

#[test]
fn webhooks_on_sqlite_are_all_accepted_and_durable() {
    check(&webhooks("sqlite", None), "sqlite");
}

#[test]
fn webhooks_on_postgres_are_all_accepted_and_durable() {
    let url = std::env::var("LOADTEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if reachable(&url, 5432) {
        check(&webhooks("postgres", Some(&url)), "postgres");
    }
}
