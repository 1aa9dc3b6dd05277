//! Runs the built `loadtest webhooks` briefly on SQLite and PostgreSQL and checks that every signed
//! push was answered 202 and left its delivery, release, pipeline and jobs behind.
//!
//! The PostgreSQL case needs a server at postgres://postgres@127.0.0.1:5432 (or `LOADTEST_PG_URL`)
//! and is skipped, with a message, when none answers.

use std::process::Command;

use serde_json::Value;

fn webhooks(backend: &str, url: Option<&str>) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command.args([
        "webhooks",
        "--backend",
        backend,
        "--webhooks",
        "120",
        "--warmup",
        "20",
        "--concurrency",
        "8",
        "--repos",
        "4",
    ]);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    let output = command.output().expect("run loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadtest webhooks --backend {backend} failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one JSON line, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
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
    assert_eq!(rows["jobs"], 140 * 7, "{result}");
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

/// Whether the server of `scheme://[user@]host[:port]/…` accepts a TCP connection.
fn reachable(url: &str, default_port: u16) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let addr = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    let ok = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok());
    if !ok {
        eprintln!("skipping: nothing answers at {addr}");
    }
    ok
}
