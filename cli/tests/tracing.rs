//! One trace from a GitHub webhook through every job of its pipeline, for real: `enclii server
//! --log-json` with build steps (Docker engine, local registry and S3 server, as in
//! `pipeline.rs`) and `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a test receiver — a small
//! OTLP/HTTP listener in this file that takes `POST /v1/traces` protobuf bodies and decodes them
//! with `enclii_telemetry::otlp` (no real collector runs here). A signed push delivery carrying a
//! `traceparent` builds a tiny image; then every job of its pipeline carries `payload._trace` of
//! that trace, the JSON log lines of the jobs carry its `trace_id`, and the spans exported —
//! `http_request` and one `job` span per job — carry it too, each job's span the child of the
//! span its `_trace` names.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclii_queue::TraceContext;
use enclii_telemetry::otlp::{ExportedSpan, decode_spans};
use serde_json::{Value, json};
use support::pipeline::*;
use support::{TOKEN, wait_exit};

const WEBHOOK_SECRET: &str = "tracing-test-webhook-secret";

/// Each request's path and body.
type Posts = Mutex<Vec<(String, Vec<u8>)>>;

/// The test's OTLP/HTTP receiver: keeps every `POST` body with its path.
struct Receiver {
    url: String,
    posts: Arc<Posts>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let posts: Arc<Posts> = Arc::default();
        let kept = posts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Receiver { url, posts }
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        let posts = self.posts.lock().unwrap();
        let mut spans = Vec::new();
        for (path, body) in posts.iter() {
            assert_eq!(path, "/v1/traces", "only traces are exported");
            spans.extend(decode_spans(body).expect("an ExportTraceServiceRequest"));
        }
        spans
    }
}

/// HTTP/1.1 with keep-alive: each request answered `200` with an empty body.
fn serve(stream: TcpStream, posts: &Posts) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            assert!(!lower.starts_with("transfer-encoding"), "unexpected {line}");
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
        posts.lock().unwrap().push((path, body));
        writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    }
}

fn get(server: &Server, path: &str) -> Value {
    let (status, _, body) = request(server, "GET", path, &[], "");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The JSON log lines (`--log-json`) of the server so far.
fn log_lines(server: &Server) -> Vec<Value> {
    let text = std::fs::read_to_string(server.data.with_extension("log")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
        .collect()
}

/// The `job` span of a log line (in its span list), if it was logged inside one.
fn job_span(line: &Value) -> Option<&Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == "job")
}

#[test]
fn a_webhook_trace_follows_every_job_of_its_pipeline_into_logs_and_exported_spans() {
    let receiver = Receiver::start();
    let (url, sha) = repository(&[
        ("Dockerfile", &format!("FROM {BASE_IMAGE}\nCOPY app.txt /app.txt\n")),
        ("app.txt", "traced\n"),
    ]);
    let mut server = server(&[
        ("ENCLII_LOG_JSON", "true"),
        ("ENCLII_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        // The pool's own line per attempt ("attempt ended"), so every job logs at least once.
        ("ENCLII_LOG", "info,enclii_worker=debug"),
    ]);
    service(&server, &url, json!({}));

    // Any request answers with its span's traceparent, a new trace when the caller sent none.
    let (status, headers, _) = request(&server, "GET", "/v1/projects", &[], "");
    assert_eq!(status, 200);
    let own: TraceContext = header(&headers, "traceparent").expect("a traceparent").parse().unwrap();

    // A push delivery, signed, continuing the caller's trace.
    let caller = TraceContext::new_root();
    assert_ne!(caller.trace_id, own.trace_id);
    let trace_id = caller.trace_id_hex();
    let body = json!({
        "ref": "refs/heads/main", "after": sha, "before": "0".repeat(40), "created": false, "deleted": false,
        "repository": {"full_name": "org/shop", "clone_url": url, "html_url": url},
        "head_commit": {"id": sha, "message": "traced"}
    })
    .to_string();
    let signature = enclii_auth::github_signature::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let (status, headers, outcome) = request(
        &server,
        "POST",
        "/v1/webhooks/github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", format!("trace-{}", std::process::id())),
            ("X-Hub-Signature-256", format!("sha256={signature}")),
            ("traceparent", caller.to_string()),
        ],
        &body,
    );
    assert!((200..300).contains(&status), "{status} {outcome}");
    let answered: TraceContext = header(&headers, "traceparent").unwrap().parse().unwrap();
    assert_eq!(
        answered.trace_id, caller.trace_id,
        "the delivery continues the caller's trace"
    );
    assert_ne!(answered.span_id, caller.span_id, "as a span of its own");
    let pipeline = outcome["pipelines"][0].as_i64().unwrap_or_else(|| panic!("{outcome}"));
    let release = outcome["releases"][0].as_i64().unwrap();
    let r = wait_finished(&server, release, Duration::from_secs(180));
    assert_eq!(r["status"], "ready", "{r:#}");

    // Every job of the pipeline carries the trace: the steps were made inside the request's span.
    let run = get(&server, &format!("/v1/pipelines/{pipeline}"));
    let steps = run["steps"].as_array().unwrap();
    let names: BTreeSet<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["clone", "build", "push", "sbom", "sign", "deploy"]),
        "{run}"
    );
    let mut ran = Vec::new();
    for step in steps {
        let id = step["job"].as_i64().unwrap();
        let job = get(&server, &format!("/v1/jobs/{id}"));
        let carried: TraceContext = job["payload"]["_trace"]
            .as_str()
            .unwrap_or_else(|| panic!("job {id} has no _trace: {job}"))
            .parse()
            .unwrap();
        assert_eq!(
            carried, answered,
            "job {id} ({}) is a child of the delivery's span",
            step["name"]
        );
        if job["state"] == "completed" {
            ran.push((id, step["name"].as_str().unwrap().to_string()));
        }
    }
    // `deploy` waits: this server has no deploy target.
    assert_eq!(ran.len(), 5, "{run}");

    // The JSON log lines logged inside each job carry the trace id (the `job` span's fields).
    let lines = log_lines(&server);
    for (id, name) in &ran {
        let inside: Vec<&Value> = lines
            .iter()
            .filter(|line| job_span(line).is_some_and(|s| s["job_id"] == *id))
            .collect();
        assert!(!inside.is_empty(), "no log line inside job {id} ({name})");
        for line in inside {
            let span = job_span(line).unwrap();
            assert_eq!(span["trace_id"], trace_id.as_str(), "{line}");
            assert_eq!(span["kind"], name.as_str(), "{line}");
            assert_eq!(span["project"], "shop", "{line}");
            assert_eq!(span["pipeline"], pipeline, "{line}");
        }
    }

    // Handlers' own lines too (their tasks run inside the job's span and trace).
    assert!(
        lines.iter().any(|line| line["fields"]["message"] == "signed image"
            && job_span(line).is_some_and(|s| s["kind"] == "sign" && s["trace_id"] == trace_id.as_str())),
        "the sign handler's line carries the trace"
    );

    // SIGTERM: the server stops and flushes the spans still buffered.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = wait_exit(&mut server.child, Duration::from_secs(30)).expect("the server stops on SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = receiver.spans();
        let jobs = spans
            .iter()
            .filter(|s| s.name == "job" && s.trace_id == trace_id)
            .count();
        if jobs >= ran.len() || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let traced: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let delivery = traced
        .iter()
        .find(|s| s.name == "http_request" && s.attribute("path") == Some("/v1/webhooks/github"))
        .unwrap_or_else(|| panic!("no http_request span of the delivery among {traced:#?}"));
    assert_eq!(
        delivery.span_id,
        answered.span_id_hex(),
        "the header names the exported span"
    );
    assert_eq!(
        delivery.parent_span_id,
        caller.span_id_hex(),
        "the caller's span is its parent"
    );
    assert_eq!(delivery.attribute("method"), Some("POST"));
    assert_eq!(delivery.resource_attribute("service.name"), Some("enclii"));
    assert_eq!(delivery.resource_attribute("enclii.role"), Some("all"));
    for (id, name) in &ran {
        let span = traced
            .iter()
            .find(|s| s.name == "job" && s.attribute("job_id") == Some(id.to_string().as_str()))
            .unwrap_or_else(|| panic!("no exported span of job {id} ({name}) in trace {trace_id}"));
        assert_eq!(span.parent_span_id, answered.span_id_hex(), "job {id} ({name})");
        assert_eq!(span.attribute("kind"), Some(name.as_str()));
        assert_eq!(span.attribute("attempt"), Some("1"));
    }
}

/// An OTLP endpoint that accepts connections and never answers, given with credentials in its
/// URL: the server still exits on SIGTERM within its shutdown grace plus the flush bound
/// (`enclii_telemetry::FLUSH_TIMEOUT`), and neither the endpoint's credentials, the bearer token
/// nor a query string reach its log, even at `debug`. No Docker needed.
#[test]
fn a_silent_otlp_endpoint_neither_holds_up_sigterm_nor_leaks_credentials() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().flatten() {
            kept.push(stream);
        }
    });
    let data = support::data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let log_path = data.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let endpoint = format!("http://collector:s3cr3t-password@127.0.0.1:{port}");
    let data_str = data.display().to_string();
    let (mut child, addr) = support::launch(
        &[],
        &[
            ("ENCLII_DATA_DIR", data_str.as_str()),
            ("ENCLII_OTLP_ENDPOINT", endpoint.as_str()),
            ("ENCLII_SHUTDOWN_GRACE_SECONDS", "1"),
            ("ENCLII_LOG", "debug,sqlx=warn"),
        ],
        std::process::Stdio::from(log),
    );
    for n in 0..20 {
        let (status, _) = support::http(&addr, "GET", &format!("/v1/projects?token=s3cr3t-query-{n}"), "");
        assert_eq!(status, 200);
    }
    // A job too, so the worker's spans are buffered as well (whether or not the project exists).
    support::http(
        &addr,
        "POST",
        "/v1/jobs",
        &json!({"kind": "ping", "project": "p"}).to_string(),
    );
    // Let the batch exporter start a request that is never answered.
    std::thread::sleep(Duration::from_millis(5500));

    let pid = child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = wait_exit(&mut child, Duration::from_secs(30));
    let took = started.elapsed();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&log_path);
    assert!(exit.is_some(), "the server did not stop on SIGTERM: {text}");
    assert!(
        took < Duration::from_secs(1) + enclii_telemetry::FLUSH_TIMEOUT + Duration::from_secs(3),
        "the server took {took:?} to stop"
    );
    assert!(
        text.contains(&format!("http://***@127.0.0.1:{port}/v1/traces")),
        "the endpoint is named, without its credentials: {text}"
    );
    for secret in ["s3cr3t", TOKEN] {
        assert!(!text.contains(secret), "{secret:?} in the log: {text}");
    }
}
