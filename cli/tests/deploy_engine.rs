//! The Docker target keeps up with the engine between deploys (through the `enclii` binary, real
//! builds and containers, as in `deploy.rs`): the router follows a replica the engine started
//! again on another host port, and replicas no deployment serves — left by a deploy stopped
//! mid-way — are swept away. (An engine restart as a whole is `.ci/chaos.sh`'s `restart-docker`
//! fault: it restarts the engine every test here shares.)

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::deploy::*;
use support::pipeline::*;

/// The replica's published `host:port` (`docker port`).
fn published(container: &str) -> String {
    run(Command::new(DOCKER).args(["port", container, "3000/tcp"]))
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The names of the project's replicas of `release`, running or not.
fn replica_names(project: &str, release: i64) -> Vec<String> {
    run(Command::new(DOCKER).args([
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=dev.enclii.project={project}"),
        "--filter",
        &format!("label=dev.enclii.release={release}"),
    ]))
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(str::to_string)
    .collect()
}

/// A replica the engine starts again gets a new host port (here: its old one is taken); the
/// router follows the engine's events and serves it there, with no deploy in between. (The same
/// happens to every replica when the engine itself restarts: `.ci/chaos.sh`'s `restart-docker`.)
#[test]
fn a_replica_started_again_on_a_new_port_is_served_there_without_a_deploy() {
    let _cleanup = Cleanup("ports");
    let p = platform("ports", json!({"routes": [{"host": "api.ports.test"}]}));
    let (router, host) = (p.router.as_str(), "api.ports.test");
    let release = deployed(&p);
    assert_eq!(get(router, host, "/"), (200, "v1".into()));

    let [replica] = &replica_names("ports", release)[..] else {
        panic!("one replica expected: {:?}", replica_names("ports", release));
    };
    let before = published(replica);
    run(Command::new(DOCKER).args(["stop", "-t", "1", replica]));
    // Whoever connects to the old port now is hung up on: the engine must publish elsewhere.
    let squatter = std::net::TcpListener::bind(&before).unwrap();
    std::thread::spawn(move || squatter.incoming().for_each(drop));
    run(Command::new(DOCKER).args(["start", replica]));
    let after = published(replica);
    assert_ne!(after, before, "the engine published the replica on a new port");
    wait_until(
        Duration::from_secs(15),
        "the router serves the replica on its new port",
        || get(router, host, "/") == (200, "v1".into()),
    );
}

/// A deploy stopped mid-way (its job cancelled while the new release waits for readiness)
/// leaves no replica: the target sweeps away what no deployment serves, and the release that
/// served before serves on.
#[test]
fn a_deploy_stopped_mid_way_leaves_no_replica_behind() {
    let _cleanup = Cleanup("sweep");
    let p = platform_in(
        "sweep",
        "prod",
        json!({"routes": [{"host": "api.sweep.test"}]}),
        &[("ENCLII_DEPLOY_HEALTH_TIMEOUT_SECONDS", "300")],
    );
    let (server, router, host) = (&p.server, p.router.as_str(), "api.sweep.test");
    let v1 = ready_release(&p, &head(&p));
    let d = deploy(&p, v1, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");

    // v2 never passes its readiness probe (no /healthz): its deploy waits for it.
    let v2_sha = commit(&p.url, &files(&app_files("v2")), &["www/healthz"]);
    let v2 = ready_release(&p, &v2_sha);
    let second = deploy(&p, v2, "deployments");
    wait_until(Duration::from_secs(60), "v2's replica is started", || {
        !replica_names("sweep", v2).is_empty()
    });
    let (status, body) = call(
        server,
        "POST",
        &format!("/v1/jobs/{}/cancel", second["job_id"]),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(30),
        "the stopped deploy's replica is removed",
        || replica_names("sweep", v2).is_empty(),
    );
    assert_eq!(get(router, host, "/"), (200, "v1".into()));
    assert_eq!(replica_names("sweep", v1).len(), 1);
}

/// The project's runtime status of `service` (`GET …/status`).
fn runtime(server: &Server, project: &str, service: &str) -> Value {
    let (status, body) = call(server, "GET", &format!("/v1/projects/{project}/status"), Value::Null);
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service)
        .cloned()
        .unwrap_or_else(|| panic!("no {service} in {body}"))
}

/// Liveness (issue 16, item 4): a replica failing its liveness probe is restarted, one that keeps
/// exiting is restarted by the engine, and both are counted in the runtime status (`enclii ps`,
/// the dashboard) — a crash loop shows — while the router follows the replicas.
#[test]
fn a_replica_failing_its_liveness_probe_is_restarted_and_a_crash_loop_is_counted() {
    let _cleanup = Cleanup("liveness");
    // `/live` does not exist: every liveness probe fails, readiness (`/healthz`) passes.
    let p = platform(
        "liveness",
        json!({
            "routes": [{"host": "api.liveness.test"}],
            "health": {"readiness": {"httpGet": "/healthz"},
                       "liveness": {"httpGet": "/live", "periodSeconds": 1, "failureThreshold": 2}}
        }),
    );
    let server = &p.server;
    deployed(&p);
    wait_until(Duration::from_secs(60), "a liveness restart", || {
        runtime(server, "liveness", "api")["restarts"].as_u64().unwrap_or(0) >= 1
    });
    wait_until(Duration::from_secs(30), "the restarted replica served", || {
        get(&p.router, "api.liveness.test", "/") == (200, "v1".into())
    });
    // The restart is in the service's history, with the probe's failure.
    let restarted = events(server, "api");
    let event = restarted
        .iter()
        .find(|e| e["kind"] == "liveness_failed")
        .unwrap_or_else(|| panic!("no liveness event in {restarted:?}"));
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains("liveness probe 2 times") && detail.contains("restarted"),
        "{event}"
    );
    assert!(
        event["replica"]
            .as_str()
            .unwrap()
            .starts_with("enclii-liveness-prod-api-r"),
        "{event}"
    );
    assert!(
        !restarted.iter().any(|e| e["kind"] == "exited"),
        "a liveness restart is not also an exit: {restarted:?}"
    );

    // A second service whose process exits 2 s after it started serving: restarted, counted.
    let mut spec = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": "liveness", "environment": "prod", "name": "crashy"},
        "spec": {"source": {"git": {"repository": p.url, "branch": "main"}},
                 "runtime": {"ports": [3000], "memory": "64Mi", "cpu": "250m",
                             "cmd": ["sh", "-c", "httpd -p 3000 -h /www; sleep 2; exit 1"]},
                 "health": {"readiness": {"httpGet": "/healthz"}}}
    });
    let (status, body) = call(server, "POST", "/v1/projects/liveness/services", spec.take());
    assert_eq!(status, 201, "{body}");
    let crashy = ready_release_of(&p, "crashy", &head(&p));
    let d = deploy_of(&p, "crashy", crashy, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    wait_until(Duration::from_secs(60), "the crash loop counted", || {
        runtime(server, "liveness", "crashy")["restarts"].as_u64().unwrap_or(0) >= 2
    });
    // Each exit is in its history, with the exit code; the CLI lists them.
    wait_until(Duration::from_secs(30), "the exits recorded", || {
        events(server, "crashy")
            .iter()
            .filter(|e| e["kind"] == "exited" && e["detail"].as_str().unwrap().contains("code 1"))
            .count()
            >= 2
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args(["events", "crashy", "--limit", "5"])
        .env_remove("ENCLII_PROFILE")
        .env("ENCLII_CONFIG", server.data.join("cli.toml"))
        .env("ENCLII_SERVER", format!("http://{}", server.addr))
        .env("ENCLII_TOKEN", support::TOKEN)
        .env("ENCLII_PROJECT", "liveness")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("exited") && text.contains("exited with code 1"), "{text}");
}

/// The service's replica events (`GET …/services/{s}/events`), newest first.
fn events(server: &support::pipeline::Server, service: &str) -> Vec<serde_json::Value> {
    let (status, body) = call(
        server,
        "GET",
        &format!("/v1/projects/liveness/services/{service}/events"),
        serde_json::Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

/// Builds the platform's head commit and deploys it; returns the release, serving.
fn deployed(p: &Platform) -> i64 {
    let release = ready_release(p, &head(p));
    let d = deploy(p, release, "deployments");
    let d = wait_status(&p.server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    release
}

/// A client sending `GET /` through the router every 10 ms until [`ClientLoop::finish`], which
/// returns how many it sent and the answers that were not `200`.
struct ClientLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<(u16, String)>)>,
}

impl ClientLoop {
    fn start(router: &str, host: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, router, host) = (stop.clone(), router.to_string(), host.to_string());
        let thread = std::thread::spawn(move || {
            let (mut sent, mut failed) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = get(&router, &host, "/");
                sent += 1;
                if answer.0 != 200 {
                    failed.push(answer);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, failed)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (usize, Vec<(u16, String)>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The newest deployment of the project with `reason`, once it ended.
fn ended_deployment(server: &Server, project: &str, reason: &str) -> Option<Value> {
    let (status, body) = call(
        server,
        "GET",
        &format!("/v1/projects/{project}/deployments?limit=20"),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body.as_array()?
        .iter()
        .find(|d| d["reason"] == reason)
        .filter(|d| d["status"] == "succeeded" || d["status"] == "failed")
        .cloned()
}

/// Scaling (issue 16, item 3): a new replica range rolls the release that runs — a deployment
/// with reason `scale`, no build — and the router answers throughout the scale-up.
#[test]
fn scaling_a_deployed_service_rolls_its_running_release() {
    let _cleanup = Cleanup("scaling");
    let p = platform("scaling", json!({"routes": [{"host": "api.scaling.test"}]}));
    let (server, router, host) = (&p.server, p.router.as_str(), "api.scaling.test");
    let release = deployed(&p);
    assert_eq!(replica_names("scaling", release).len(), 1);

    let scale = |min: u32| {
        let (status, service) = call(server, "GET", "/v1/projects/scaling/services/api", Value::Null);
        assert_eq!(status, 200, "{service}");
        let mut spec = service["spec"].clone();
        spec["spec"]["runtime"]["replicas"] = json!({"min": min, "max": 2});
        let (status, body) = call(server, "PUT", "/v1/projects/scaling/services/api", spec);
        assert_eq!(status, 200, "{body}");
    };
    let client = ClientLoop::start(router, host);
    scale(2);
    wait_until(Duration::from_secs(60), "the scale-up deployment", || {
        ended_deployment(server, "scaling", "scale").is_some()
    });
    let (sent, failed) = client.finish();
    let d = ended_deployment(server, "scaling", "scale").unwrap();
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["release_id"], release, "the running release, not a new build: {d}");
    assert_eq!(replica_names("scaling", release).len(), 2);
    assert!(
        sent > 10 && failed.is_empty(),
        "{} of {sent} requests failed while scaling up: {failed:?}",
        failed.len()
    );

    // Down again: the extra replica goes, the first one serves on.
    let before = d["id"].as_i64().unwrap();
    scale(1);
    wait_until(Duration::from_secs(60), "the scale-down deployment", || {
        ended_deployment(server, "scaling", "scale").is_some_and(|d| d["id"].as_i64().unwrap() > before)
    });
    assert_eq!(replica_names("scaling", release).len(), 1);
    assert_eq!(get(router, host, "/"), (200, "v1".into()));
}

/// The environment a replica runs with (`docker inspect`).
fn replica_env(name: &str) -> String {
    run(Command::new(DOCKER).args(["inspect", "-f", "{{json .Config.Env}}", name]))
}

/// Spec TC-03: rotating a secret rolls the running release — new replicas with the new value
/// start and pass readiness before the old ones stop — and a client loop through the router sees
/// no failed request. A changed `env` rolls it the same way (reason `config`).
#[test]
fn a_rotated_secret_rolls_the_running_release_with_no_failed_request() {
    let _cleanup = Cleanup("rotation");
    let p = platform("rotation", json!({"routes": [{"host": "api.rotation.test"}]}));
    let (server, router) = (&p.server, p.router.as_str());
    let set_secret = |value: &str| {
        let (status, body) = call(
            server,
            "PUT",
            "/v1/projects/rotation/secrets/API_KEY",
            json!({"value": value, "service": "api"}),
        );
        assert_eq!(status, 200, "{body}");
    };
    set_secret("first-value");
    let release = deployed(&p);
    let [first] = &replica_names("rotation", release)[..] else {
        panic!("one replica expected")
    };
    assert!(replica_env(first).contains("API_KEY=first-value"));

    let client = ClientLoop::start(router, "api.rotation.test");
    set_secret("second-value");
    wait_until(Duration::from_secs(60), "the secret's deployment", || {
        ended_deployment(server, "rotation", "secret").is_some()
    });
    let (sent, failed) = client.finish();
    let d = ended_deployment(server, "rotation", "secret").unwrap();
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["release_id"], release, "the running release, not a new build: {d}");
    let [second] = &replica_names("rotation", release)[..] else {
        panic!("one replica expected after the roll")
    };
    assert_ne!(second, first, "a new replica runs");
    assert!(replica_env(second).contains("API_KEY=second-value"));
    assert!(
        sent > 10 && failed.is_empty(),
        "{} of {sent} requests failed during the rotation: {failed:?}",
        failed.len()
    );

    // The spec's env changed: rolled as `config`.
    let (_, service) = call(server, "GET", "/v1/projects/rotation/services/api", Value::Null);
    let mut spec = service["spec"].clone();
    spec["spec"]["env"] = json!([{"name": "GREETING", "value": "hello"}]);
    let (status, body) = call(server, "PUT", "/v1/projects/rotation/services/api", spec);
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(60), "the config deployment", || {
        ended_deployment(server, "rotation", "config").is_some()
    });
    assert_eq!(
        ended_deployment(server, "rotation", "config").unwrap()["status"],
        "succeeded"
    );
    let [third] = &replica_names("rotation", release)[..] else {
        panic!("one replica expected")
    };
    assert!(replica_env(third).contains("GREETING=hello") && replica_env(third).contains("API_KEY=second-value"));
    assert_eq!(get(router, "api.rotation.test", "/"), (200, "v1".into()));
}
