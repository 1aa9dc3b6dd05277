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
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
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
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(wait_exit(child, Duration::from_secs(15)).expect("exits").success());
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
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(wait_exit(&mut child, Duration::from_secs(15)).expect("exits").success());
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
