//! Helpers of the build pipeline tests: infrastructure (Docker engine, registry, S3), local git
//! repositories, a server with build steps enabled, and its API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

pub const DOCKER: &str = "/usr/bin/docker";
pub const BASE_IMAGE: &str = "enclii-test/busybox:latest";

pub fn registry() -> String {
    std::env::var("ENCLII_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

pub fn s3() -> String {
    std::env::var("ENCLII_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8014".into())
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A 2 MB base image from Debian's static busybox (no image can be pulled on these machines).
pub fn base_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if Command::new(DOCKER)
            .args(["image", "inspect", BASE_IMAGE])
            .output()
            .unwrap()
            .status
            .success()
        {
            return;
        }
        let dir = unique_dir("base");
        std::fs::copy("/bin/busybox", dir.join("busybox")).expect("Debian's busybox-static at /bin/busybox");
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )
        .unwrap();
        run(Command::new(DOCKER)
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-t", BASE_IMAGE])
            .arg(&dir));
    });
}

pub fn unique_dir(what: &str) -> PathBuf {
    let dir = data_dir().with_extension(what);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs git in `dir` as a test author (branch `main` for new repositories); returns its stdout.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir))
}

/// A git repository with one commit of `files`; returns its `file://` URL and the commit's SHA.
pub fn repository(files: &[(&str, &str)]) -> (String, String) {
    let dir = unique_dir("repo");
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "initial"]);
    (format!("file://{}", dir.display()), git(&dir, &["rev-parse", "HEAD"]))
}

/// Adds a commit to the repository at `url` (from [`repository`]) with `files` written and
/// `remove` deleted; returns its SHA.
pub fn commit(url: &str, files: &[(&str, &str)], remove: &[&str]) -> String {
    let dir = PathBuf::from(url.strip_prefix("file://").unwrap());
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for path in remove {
        std::fs::remove_file(dir.join(path)).unwrap();
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "change"]);
    git(&dir, &["rev-parse", "HEAD"])
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

pub fn server(extra: &[(&str, &str)]) -> Server {
    base_image();
    let data = data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let (child, addr) = launch_on(&data, extra);
    Server { child, addr, data }
}

/// Stops `server` and starts it again on its data directory with `extra` settings (as a server
/// restarted by its operator): its API address changes.
pub fn restart(server: &mut Server, extra: &[(&str, &str)]) {
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (child, addr) = launch_on(&server.data, extra);
    server.child = child;
    server.addr = addr;
}

fn launch_on(data: &std::path::Path, extra: &[(&str, &str)]) -> (Child, String) {
    let bucket = format!(
        "enclii-test-{}",
        data.file_name().unwrap().to_string_lossy().replace('_', "-")
    );
    let registry = registry();
    let s3 = s3();
    let data_str = data.display().to_string();
    let mut env = vec![
        ("ENCLII_DATA_DIR", data_str.as_str()),
        ("ENCLII_REGISTRY", registry.as_str()),
        ("ENCLII_REGISTRY_INSECURE", "true"),
        ("ENCLII_S3_ENDPOINT", s3.as_str()),
        ("ENCLII_S3_BUCKET", bucket.as_str()),
        ("ENCLII_S3_ACCESS_KEY", "enclii-test"),
        ("ENCLII_S3_SECRET_KEY", "enclii-test-secret"),
        ("ENCLII_GIT_SCHEMES", "file"),
        ("ENCLII_DOCKER_CLI", DOCKER),
        ("ENCLII_LOG", "info,enclii_build=debug"),
        ("ENCLII_BUILD_STEPS", "auto"),
    ];
    env.extend_from_slice(extra);
    // Appended to, so that a restarted server's log follows its first life's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    launch(&[], &env, Stdio::from(log))
}

pub fn call(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http(&server.addr, method, path, &body);
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Creates project `shop` and service `api` building `repository`, with `build` as spec.build.
pub fn service(server: &Server, repository: &str, build: Value) {
    let (status, body) = call(server, "POST", "/v1/projects", json!({"slug": "shop"}));
    assert_eq!(status, 201, "{body}");
    let spec = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": "shop", "environment": "prod", "name": "api"},
        "spec": {"source": {"git": {"repository": repository, "branch": "main"}},
                 "build": build,
                 "runtime": {"ports": [3000]}}
    });
    let (status, body) = call(server, "POST", "/v1/projects/shop/services", spec);
    assert_eq!(status, 201, "{body}");
}

/// Builds `sha`; returns the release.
pub fn build(server: &Server, sha: &str) -> Value {
    let (status, body) = call(
        server,
        "POST",
        "/v1/projects/shop/services/api/releases",
        json!({"git_sha": sha}),
    );
    assert!(status == 201 || status == 202, "{status} {body}");
    body.get("release").cloned().unwrap_or(body)
}

pub fn release(server: &Server, id: i64) -> Value {
    let (status, body) = call(server, "GET", &format!("/v1/releases/{id}"), Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

pub fn wait_finished(server: &Server, id: i64, patience: Duration) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let r = release(server, id);
        if r["status"] != "building" {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "release {id} still building after {patience:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Builds `sha` and waits for its release to finish.
pub fn build_and_wait(server: &Server, sha: &str, patience: Duration) -> Value {
    let id = build(server, sha)["id"].as_i64().unwrap();
    wait_finished(server, id, patience)
}

/// The log of a finished release's step, through the API.
pub fn step_log(server: &Server, release: &Value, name: &str) -> String {
    stream_log(server, step(release, name)["job_id"].as_i64().unwrap(), None)
        .0
        .join("\n")
}

pub fn step<'a>(release: &'a Value, name: &str) -> &'a Value {
    release["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {release}"))
}

/// Reads a job's live log (SSE) until its `end` event; returns (line texts, final state).
pub fn stream_log(server: &Server, job: i64, until: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        stream,
        "GET /v1/jobs/{job}/logs/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let mut buf = [0u8; 8192];
    let (mut lines, mut end) = (Vec::new(), None);
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
        lines.clear();
        let mut event = "";
        for l in raw.lines() {
            if let Some(e) = l.strip_prefix("event: ") {
                event = e;
            } else if let Some(data) = l.strip_prefix("data: ") {
                match event {
                    "line" => lines.push(
                        serde_json::from_str::<Value>(data)
                            .map(|v| v["line"].as_str().unwrap_or("").to_string())
                            .unwrap_or_default(),
                    ),
                    "end" => {
                        end = serde_json::from_str::<Value>(data)
                            .ok()
                            .map(|v| v["state"].as_str().unwrap_or("").to_string())
                    }
                    _ => {}
                }
            }
        }
        if end.is_some() || until.is_some_and(|u| lines.iter().any(|l| l.contains(u))) {
            break;
        }
    }
    (lines, end)
}

pub fn processes_matching(pattern: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

pub fn wait_until(patience: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A git checkout of the app (busybox httpd on port 3000: `/` answers `hello from up`) with its
/// Service Spec for `project` (service `web` in `prod`), for `enclii up`.
pub fn app_checkout(project: &str, dockerfile: &str) -> PathBuf {
    let files = [
        ("Dockerfile", dockerfile.to_string()),
        ("www/healthz", "ok\n".to_string()),
        ("www/index.html", "hello from up\n".to_string()),
    ];
    let list: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let (url, _) = repository(&list);
    let dir = PathBuf::from(url.strip_prefix("file://").unwrap());
    let spec = format!(
        "apiVersion: enclii.dev/v1\nkind: Service\nmetadata: {{ project: {project}, environment: prod, name: web }}\n\
         spec:\n  source: {{ git: {{ repository: \"{url}\", branch: main }} }}\n\
         \x20 runtime: {{ ports: [3000], memory: 64Mi, cpu: 250m }}\n\
         \x20 health: {{ readiness: {{ httpGet: /healthz }} }}\n"
    );
    std::fs::write(dir.join("enclii.yaml"), spec).unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "spec"]);
    dir
}

/// A request with extra headers; returns the status, the response headers (names lower-cased)
/// and the body as JSON.
pub fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The value of response header `name` (lower case) of a [`request`].
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A raw request to the test's S3 server (moto, which does not check signatures): the status and
/// the body's bytes.
pub fn s3_request(method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let endpoint = s3();
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&response[9..12]).parse().unwrap();
    (status, response[split + 4..].to_vec())
}
