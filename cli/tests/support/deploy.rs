//! Helpers of the Docker deploy target's tests (`deploy.rs`, `deploy_engine.rs`): the app they
//! build, a server deploying to the engine with one project and service, the router called by
//! host name, releases, deployments and the engine's containers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::free_port;
use super::pipeline::*;

pub const WEBHOOK_SECRET: &str = "deploy-test-webhook-secret";

/// The app: busybox httpd serving `www/` on port 3000, `/healthz` for the readiness probe.
pub fn app_files(version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {BASE_IMAGE}\nCOPY www /www\nRUN chmod -R +x /www/cgi-bin 2>/dev/null || true\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("www/healthz", "ok\n".into()),
        ("www/index.html", format!("{version}\n")),
    ]
}

/// A release whose `/` answers 500 (a CGI script) while its health check passes.
pub const FAILING_CGI: &str =
    "#!/bin/sh\necho \"Status: 500 Internal Server Error\"\necho \"Content-Type: text/plain\"\necho\necho boom\n";

pub fn files<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(p, t)| (*p, t.as_str())).collect()
}

pub struct Platform {
    pub server: Server,
    pub router: String,
    pub url: String,
    pub project: &'static str,
    /// The server's settings (to restart it with: see `pipeline::restart`).
    pub env: Vec<(String, String)>,
}

impl Platform {
    /// Restarts the server on its data directory with its settings, `changed` ones replaced.
    pub fn restart(&mut self, changed: &[(&str, &str)]) {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .filter(|(k, _)| !changed.iter().any(|(c, _)| c == k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend_from_slice(changed);
        super::pipeline::restart(&mut self.server, &env);
    }
}

/// A server deploying to the Docker engine, with project `project` (unique per test: the tests
/// share one engine) and service `api` whose spec is the defaults merged with `spec`.
pub fn platform(project: &'static str, spec: Value) -> Platform {
    platform_in(project, "prod", spec, &[])
}

/// [`platform`] with the service at home in `environment` and extra server settings.
pub fn platform_in(project: &'static str, environment: &str, spec: Value, settings: &[(&str, &str)]) -> Platform {
    platform_with(project, environment, &files(&app_files("v1")), spec, settings)
}

/// [`platform_in`] building another app: `app` are its repository's files.
pub fn platform_with(
    project: &'static str,
    environment: &str,
    app: &[(&str, &str)],
    spec: Value,
    settings: &[(&str, &str)],
) -> Platform {
    // The router's address: the caller's (`ENCLII_ROUTER_LISTEN` in `settings`), else a free port.
    let router = match settings.iter().find(|(k, _)| *k == "ENCLII_ROUTER_LISTEN") {
        Some((_, listen)) => listen.to_string(),
        None => format!("127.0.0.1:{}", free_port()),
    };
    let (url, _) = repository(app);
    let mut env = vec![
        ("ENCLII_DEPLOY_TARGET", "docker"),
        ("ENCLII_ROUTER_LISTEN", router.as_str()),
        ("ENCLII_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("ENCLII_DEPLOY_HEALTH_TIMEOUT_SECONDS", "20"),
    ];
    env.extend_from_slice(settings);
    let server = server(&env);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (status, body) = call(&server, "POST", "/v1/projects", json!({"slug": project}));
    assert_eq!(status, 201, "{body}");
    let mut document = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": project, "environment": environment, "name": "api"},
        "spec": {"source": {"git": {"repository": url, "branch": "main"}},
                 "runtime": {"ports": [3000], "memory": "64Mi", "cpu": "250m"},
                 "health": {"readiness": {"httpGet": "/healthz"}}}
    });
    merge(&mut document["spec"], spec);
    let (status, body) = call(&server, "POST", &format!("/v1/projects/{project}/services"), document);
    assert_eq!(status, 201, "{body}");
    Platform {
        server,
        router,
        url,
        project,
        env,
    }
}

pub fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (k, v) in from {
            into.insert(k, v);
        }
    }
}

/// GET `path` from the router as `host`: (status, body).
pub fn get(router: &str, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(router).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    (status, body.trim().to_string())
}

/// A chunked body's data (a CGI's answer has no length: the router streams it in chunks).
fn dechunk(mut rest: &str) -> String {
    let mut data = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        data.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    data
}

/// The commit the service's repository is at.
pub fn head(p: &Platform) -> String {
    run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(p.url.strip_prefix("file://").unwrap()))
}

/// Builds `sha` without deploying it; returns the ready release's id.
pub fn ready_release(p: &Platform, sha: &str) -> i64 {
    ready_release_of(p, "api", sha)
}

/// [`ready_release`] of another service of the project.
pub fn ready_release_of(p: &Platform, service: &str, sha: &str) -> i64 {
    let server = &p.server;
    let (status, body) = call(
        server,
        "POST",
        &format!("/v1/projects/{}/services/{service}/releases", p.project),
        json!({"git_sha": sha, "deploy": false}),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["release"]["id"].as_i64().unwrap();
    let release = wait_finished(server, id, Duration::from_secs(240));
    assert_eq!(release["status"], "ready", "{release}");
    id
}

pub fn deploy(p: &Platform, release: i64, path: &str) -> Value {
    deploy_of(p, "api", release, path)
}

pub fn deploy_of(p: &Platform, service: &str, release: i64, path: &str) -> Value {
    let (status, body) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{}/services/{service}/{path}", p.project),
        json!({if path == "rollback" { "to" } else { "release" }: release}),
    );
    assert_eq!(status, 202, "{body}");
    body
}

pub fn deployment(server: &Server, id: i64) -> Value {
    let (status, body) = call(server, "GET", &format!("/v1/deployments/{id}"), Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the deployment's status is one of `statuses`; while waiting, sends a request to
/// the service every 20 ms when `traffic` is given (so a canary has something to be judged on).
pub fn wait_status(server: &Server, id: i64, statuses: &[&str], traffic: Option<(&str, &str)>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut polled = Instant::now();
    loop {
        if let Some((router, host)) = traffic {
            get(router, host, "/");
            std::thread::sleep(Duration::from_millis(20));
            if polled.elapsed() < Duration::from_millis(250) {
                continue;
            }
        } else {
            std::thread::sleep(Duration::from_millis(250));
        }
        polled = Instant::now();
        let d = deployment(server, id);
        if statuses.contains(&d["status"].as_str().unwrap_or_default()) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} never reached {statuses:?}: {d}"
        );
    }
}

pub fn replicas_of(project: &str, release: i64) -> usize {
    let out = run(Command::new(DOCKER).args([
        "ps",
        "-q",
        "--filter",
        &format!("label=dev.enclii.project={project}"),
        "--filter",
        &format!("label=dev.enclii.release={release}"),
    ]));
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Removes the project's containers, volumes and networks (so that a rerun starts clean).
pub fn remove_containers(project: &str) {
    let out = run(Command::new(DOCKER).args(["ps", "-aq", "--filter", &format!("label=dev.enclii.project={project}")]));
    for id in out.lines().filter(|l| !l.trim().is_empty()) {
        let _ = Command::new(DOCKER).args(["rm", "-f", id]).output();
    }
    // Its services' volumes and its add-ons' data.
    for prefix in [format!("enclii-{project}-"), format!("enclii-addon-{project}-")] {
        let volumes = run(Command::new(DOCKER).args(["volume", "ls", "-q", "--filter", &format!("name={prefix}")]));
        for volume in volumes.lines().filter(|l| !l.trim().is_empty()) {
            let _ = Command::new(DOCKER).args(["volume", "rm", "-f", volume]).output();
        }
    }
    // Its environments' networks: the engine has room for a few dozen bridge networks only.
    let networks = run(Command::new(DOCKER).args([
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=dev.enclii.project={project}"),
    ]));
    for network in networks.lines().filter(|l| !l.trim().is_empty()) {
        let _ = Command::new(DOCKER).args(["network", "rm", network]).output();
    }
}

/// Removes the test's containers however the test ends.
pub struct Cleanup(pub &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers(self.0);
    }
}

/// Delivers a signed GitHub `pull_request` event; the answer's body.
pub fn webhook(server: &Server, delivery: &str, body: &str) -> Value {
    let signature = enclii_auth::github_signature::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let headers = [
        ("X-GitHub-Event", "pull_request".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", format!("sha256={signature}")),
    ];
    let (status, _, answer) = request(server, "POST", "/v1/webhooks/github", &headers, body);
    assert!((200..300).contains(&status), "{status} {answer}");
    answer
}

/// A `pull_request` event of the repository at `url` (its head on branch `feature`).
pub fn pull_request(url: &str, action: &str, number: u64, sha: &str) -> String {
    json!({
        "action": action, "number": number,
        "repository": {"full_name": "org/shop", "clone_url": url, "html_url": url},
        "pull_request": {"number": number, "merged": false,
                         "head": {"sha": sha, "ref": "feature", "repo": {"clone_url": url}},
                         "base": {"sha": "0".repeat(40), "ref": "main"}}
    })
    .to_string()
}
