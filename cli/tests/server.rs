//! The `enclii server` binary as users run it: embedded default, HTTP, graceful SIGTERM, bad config.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn the_embedded_default_runs_a_job_and_stops_gracefully_on_sigterm() {
    let dir = data_dir();
    let (mut child, addr) = start(&["--data-dir", dir.to_str().unwrap()]);
    let (status, body) = http(&addr, "GET", "/health/ready", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sqlite"));
    let (status, body) = http(&addr, "POST", "/v1/jobs", r#"{"kind":"ping","project":"demo"}"#);
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let id = created["id"].as_i64().expect("an id");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, job) = http(&addr, "GET", &format!("/v1/jobs/{id}"), "");
        if job.contains(r#""state":"completed""#) {
            break;
        }
        assert!(Instant::now() < deadline, "the ping job never completed: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.join("enclii.db").exists(),
        "the embedded database lives in the data dir"
    );
    terminate(&mut child);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("shutting down gracefully"), "{stderr}");
}

#[test]
fn an_unreachable_database_fails_fast_with_a_clear_message_and_no_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .env(
            "ENCLII_DATABASE_URL",
            "postgres://enclii:hunter2-secret@127.0.0.1:1/enclii",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the database (postgres)"), "{stderr}");
    assert!(stderr.contains("Check that the server is running"), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
}

#[test]
fn an_unwritable_data_dir_says_how_to_fix_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/proc/enclii-cannot-write-here",
        ])
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set --data-dir or ENCLII_DATA_DIR"), "{stderr}");
}

#[test]
fn worker_only_processes_share_one_database_any_number_of_times() {
    let dir = data_dir();
    let data = ["--data-dir", dir.to_str().unwrap()];
    // The api role alone enqueues; two worker-only processes (on free ports by default) run jobs.
    let (mut api, addr) = start(&[&["--role", "api", "--listen", "127.0.0.1:0"][..], &data].concat());
    let (mut worker_a, addr_a) = start(&[&["--role", "worker"][..], &data].concat());
    let (mut worker_b, addr_b) = start(&[&["--role", "worker"][..], &data].concat());
    assert_ne!(addr_a, addr_b);
    assert_eq!(http(&addr_a, "GET", "/health/ready", "").0, 200);
    assert_eq!(
        http(&addr_a, "GET", "/v1/queue/stats", "").0,
        404,
        "workers serve no API"
    );
    let ids: Vec<i64> = (0..20)
        .map(|i| {
            let body = format!(r#"{{"kind":"ping","project":"p{}"}}"#, i % 3);
            let (status, body) = http(&addr, "POST", "/v1/jobs", &body);
            assert_eq!(status, 201, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ids {
        loop {
            let (_, job) = http(&addr, "GET", &format!("/v1/jobs/{id}"), "");
            if job.contains(r#""state":"completed""#) {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} never completed: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for child in [&mut api, &mut worker_a, &mut worker_b] {
        terminate(child);
    }
}

#[test]
fn a_fresh_installation_prints_a_bootstrap_token_once_and_never_logs_it() {
    let dir = data_dir();
    let run = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_enclii"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
            .env_remove("ENCLII_DATABASE_URL")
            .env_remove("ENCLII_REDIS_URL")
            .env_remove("ENCLII_BOOTSTRAP_TOKEN")
            .env("ENCLII_REGISTRY_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("enclii listening on http://")
            .unwrap()
            .to_string();
        // Readiness means bootstrap is done; then stop and collect everything printed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while http(&addr, "GET", "/health/ready", "").0 != 200 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        terminate(&mut child);
        let (mut rest, mut stderr) = (String::new(), String::new());
        stdout.read_to_string(&mut rest).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (addr, rest, stderr)
    };
    let (_, stdout, stderr) = run();
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bootstrap admin token (shown once; keep it safe): "))
        .unwrap_or_else(|| panic!("no bootstrap token in {stdout:?}"))
        .to_string();
    assert!(token.starts_with("enclii_pat_"));
    assert!(!stderr.contains(&token), "the token is never logged");
    assert!(dir.join("master.key").exists(), "a master key was generated");
    let (_, stdout, _) = run();
    assert!(
        !stdout.contains("bootstrap admin token"),
        "only on the first start: {stdout:?}"
    );
}

/// Runs the binary with `args` (no database URL, no bootstrap token from the environment) and
/// returns its child with stdout and stderr piped.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args(args)
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .env_remove("ENCLII_BOOTSTRAP_TOKEN")
        .env("ENCLII_DEPLOY_TARGET", "none")
        .env("ENCLII_BUILD_STEPS", "off")
        .env("ENCLII_REGISTRY_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a server with SIGTERM and returns what it printed on stdout after `consumed` lines.
fn stop(mut child: std::process::Child, mut stdout: BufReader<std::process::ChildStdout>) -> String {
    terminate(&mut child);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    rest
}

/// `http` with another bearer token.
fn http_as(token: &str, addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
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

const TOKEN_LINE: &str = "bootstrap admin token (shown once; keep it safe): ";

/// A first start that fails (its address is taken) creates no Owner: the next start prints the
/// bootstrap token, and it works.
#[test]
fn a_start_that_cannot_listen_leaves_the_bootstrap_token_for_the_next() {
    let dir = data_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = ["server", "--listen", &addr, "--data-dir", dir.to_str().unwrap()];
    let out = spawn(&args, &[]).wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bootstrap"));
    drop(taken);

    let mut child = spawn(&args, &[]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut second).unwrap();
    assert_eq!(first.trim(), format!("enclii listening on http://{addr}"));
    let token = second
        .trim()
        .strip_prefix(TOKEN_LINE)
        .unwrap_or_else(|| panic!("no bootstrap token after a failed first start: {second:?}"))
        .to_string();
    let (status, body) = http_as(&token, &addr, "GET", "/v1/whoami");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""role":"Owner""#), "{body}");
    stop(child, stdout);
}

/// `enclii server recover-owner` against the data directory of a running server: a subject
/// becomes Owner on `*` with a new token printed once, audited as `operator:recover-owner`.
#[test]
fn recover_owner_gives_the_platform_an_owner_and_a_token_again() {
    let dir = data_dir();
    let data = ["--data-dir", dir.to_str().unwrap()];
    let (mut server, addr) = start(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args([&["server", "recover-owner", "--subject", "user:ops"][..], &data].concat())
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Owner of every project: user:ops; new token (shown once; keep it safe): "))
        .unwrap_or_else(|| panic!("no token in {stdout:?}"))
        .to_string();
    assert!(!stderr.contains(&token), "the token is never logged: {stderr}");

    let (status, body) = http_as(&token, &addr, "GET", "/v1/whoami");
    assert_eq!(status, 200, "{body}");
    let whoami: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whoami["subject"], "user:ops");
    assert_eq!(whoami["roles"][0]["project"], "*");
    assert_eq!(whoami["roles"][0]["role"], "Owner");
    let (status, body) = http_as(&token, &addr, "GET", "/v1/audit?actor=operator:recover-owner");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("role.bind") && body.contains("token.create"), "{body}");

    // The flags may also come before the subcommand, and the default subject is user:admin.
    let out = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args([&["server"][..], &data, &["recover-owner"]].concat())
        .env_remove("ENCLII_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Owner of every project: user:admin; new token"));
    terminate(&mut server);
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data directory is the server's user's alone: created 0700 with 0600 files (database,
/// its -wal and -shm, master key), and one found open is tightened at start, saying so.
#[test]
fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let data = ["--data-dir", dir.to_str().unwrap()];
    let private_files = ["enclii.db", "enclii.db-wal", "enclii.db-shm", "master.key"];
    let check = || {
        assert_eq!(mode(&dir), 0o700, "the data directory");
        for file in private_files {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
    };
    let (server, addr) = start(&data);
    assert_eq!(http(&addr, "GET", "/health/ready", "").0, 200);
    check();
    stop_quietly(server);

    // As an older version (or a careless copy) left it; SQLite keeps the modes of a -wal and
    // -shm it finds (a clean stop may have removed them: stand-ins are created).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in private_files {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (mut server, addr) = launch(&data, &[], Stdio::piped());
    assert_eq!(http(&addr, "GET", "/health/ready", "").0, 200);
    check();
    terminate(&mut server);
    let mut stderr = String::new();
    server.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("made the data directory private"), "{stderr}");
    assert!(
        stderr.contains("master.key") && stderr.contains("0644") && stderr.contains("0600"),
        "{stderr}"
    );
}

fn stop_quietly(mut child: std::process::Child) {
    terminate(&mut child);
}

/// Sends SIGTERM and asserts a clean exit within 15 s (the process's stderr stays readable).
fn terminate(child: &mut std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_exit(child, Duration::from_secs(15)).expect("exits").success());
}

/// Whether the server has closed `stream`: a read that ends (EOF or reset) within `patience`.
fn closed_within(stream: &mut std::net::TcpStream, patience: Duration) -> bool {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("unexpected data from the server"),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Sends one keep-alive request on `stream` and reads its whole response (by Content-Length).
fn keep_alive_request(stream: &mut std::net::TcpStream, addr: &str) -> u16 {
    use std::io::Write;
    write!(stream, "GET /health/live HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the response ended early");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|n| n.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

/// Slow-loris and idle clients are disconnected: a request head must be complete within the
/// header timeout once begun (a byte every 300 ms does not keep it open), and a connection that
/// moves nothing — new, or kept alive after a response — is closed after the idle timeout.
#[test]
fn slow_and_idle_connections_are_closed() {
    use std::io::Write;
    let dir = data_dir();
    let env = [("ENCLII_HTTP_HEADER_TIMEOUT", "1s"), ("ENCLII_HTTP_IDLE_TIMEOUT", "2s")];
    let (mut server, addr) = start_with(&["--data-dir", dir.to_str().unwrap()], &env);
    assert_eq!(http(&addr, "GET", "/health/ready", "").0, 200);

    // Slow loris: one byte every 300 ms, never finishing the head.
    let mut loris = std::net::TcpStream::connect(&addr).unwrap();
    let began = Instant::now();
    let mut closed = false;
    for byte in
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if loris.write_all(&[*byte]).is_err() || closed_within(&mut loris, Duration::from_millis(300)) {
            closed = true;
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(5), "still open after 5 s");
    }
    let after = began.elapsed();
    assert!(closed, "the slow client was never disconnected");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1900),
        "closed by the 1 s header timeout, not the idle one: {after:?}"
    );

    // Kept alive after a response, then idle.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(keep_alive_request(&mut idle, &addr), 200);
    assert_eq!(keep_alive_request(&mut idle, &addr), 200, "keep-alive works");
    let began = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "the idle connection stays open"
    );
    let after = began.elapsed();
    assert!(
        after >= Duration::from_millis(1700) && after < Duration::from_millis(2900),
        "closed by the 2 s idle timeout: {after:?}"
    );

    // Connected, silent.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)),
        "a silent connection stays open"
    );
    terminate(&mut server);
}

/// One client address holds at most ENCLII_HTTP_MAX_CONNS_PER_IP connections: more are closed
/// at once, those within the limit keep working, and a closed one frees its slot.
#[test]
fn connections_beyond_the_per_address_limit_are_closed() {
    let dir = data_dir();
    let env = [("ENCLII_HTTP_MAX_CONNS_PER_IP", "4")];
    let (mut server, addr) = start_with(&["--data-dir", dir.to_str().unwrap()], &env);
    assert_eq!(http(&addr, "GET", "/health/ready", "").0, 200);
    // Let the readiness probe's connection close on the server too.
    std::thread::sleep(Duration::from_millis(200));

    let mut held: Vec<_> = (0..4).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)), "within the limit");
    }
    let mut fifth = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)),
        "the fifth connection was kept"
    );
    for stream in &mut held {
        assert_eq!(
            keep_alive_request(stream, &addr),
            200,
            "a connection within the limit works"
        );
    }
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(keep_alive_request(&mut again, &addr), 200, "a freed slot is used again");
    terminate(&mut server);
}
