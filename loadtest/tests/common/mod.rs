//! Shared by the load-test tests: run the built `loadtest` binary and read its one JSON line.

#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// Runs `loadtest <workload> --backend <backend> [--url <url>] <args…>` and parses its JSON line.
pub fn run(workload: &str, backend: &str, url: Option<&str>, args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command.args([workload, "--backend", backend]).args(args);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    let output = command.output().expect("run loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadtest {workload} --backend {backend} failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one JSON line, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

/// Whether the server of `scheme://[user@]host[:port]/…` accepts a TCP connection.
pub fn reachable(url: &str, default_port: u16) -> bool {
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
