//! Runs the built `loadtest crash` against SQLite and PostgreSQL with a short lease and checks that
//! a worker killed with SIGKILL mid-flight loses no job and runs none twice to completion.
//!
//! The PostgreSQL case needs a server at postgres://postgres@127.0.0.1:5432 (or `LOADTEST_PG_URL`),
//! the Redis case one at redis://127.0.0.1:6379 (or `LOADTEST_REDIS_URL`); each is skipped, with a
//! message, when its server does not answer.

use std::process::Command;

use serde_json::Value;

fn crash(backend: &str, url: Option<&str>) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command.args([
        "crash",
        "--backend",
        backend,
        "--jobs",
        "16",
        "--lease-ms",
        "2000",
        "--rescue-ms",
        "250",
        "--deadline-s",
        "20",
    ]);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    let output = command.output().expect("run loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadtest crash --backend {backend} failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one JSON line, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
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
