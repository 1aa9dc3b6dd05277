//! Helpers shared by the binary's tests: start `enclii server`, talk HTTP to it, wait for it.
#![allow(dead_code)]

pub mod acme;
pub mod addons;
pub mod deploy;
pub mod dns;
pub mod pipeline;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn data_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("enclii_cli_test_{}_{nanos}", std::process::id()))
}

/// The bootstrap Owner token the test servers are started with.
pub const TOKEN: &str = "enclii_pat_testtoken000_0123456789abcdefghijABCDEFGHIJ0123456789abc";

/// Starts the server on a free port and returns it with its address.
pub fn start(args: &[&str]) -> (Child, String) {
    start_with(args, &[])
}

/// [`start`] with extra environment variables.
pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    launch(args, env, Stdio::piped())
}

/// Starts the server with `stderr` (its log) going where the caller says: a long-running test
/// sends it to a file, so that a full pipe never blocks the server.
pub fn launch(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> (Child, String) {
    let listen: &[&str] = if args.contains(&"--role") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .arg("server")
        .args(listen)
        .args(args)
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .env("ENCLII_BOOTSTRAP_TOKEN", TOKEN)
        .env("ENCLII_RATE_LIMIT_BURST", "100000")
        // Deploys only where a test asks for them (and never on a shared router port).
        .env("ENCLII_DEPLOY_TARGET", "none")
        .env("ENCLII_ROUTER_LISTEN", "127.0.0.1:0")
        // Builds only where a test asks for them (`pipeline.rs`), and each server's embedded
        // registry on a port of its own.
        .env("ENCLII_BUILD_STEPS", "off")
        .env("ENCLII_REGISTRY_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("enclii listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

/// A port nothing listens on now (for a server's second listener, e.g. the router).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 client: returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn wait_exit(child: &mut Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
