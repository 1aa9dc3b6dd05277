//! The web dashboard in a real headless Chromium (Debian's `chromium`, driven by npm's
//! `playwright-core`: `api/dashboard/e2e/dashboard.mjs`), against a real server running a real
//! build (BuildKit, registry, S3): load, sign in, watch the pipeline progress step by step, read a
//! step's live log, see a pending custom domain's DNS records and check it again, retry a dead job, pause and resume a project's queue, see what each worker
//! cannot run and why a release waits; signed in again with a read-only (`read` scope) token, see
//! Pause and Retry refused by the API and nothing change (no audit event, the project still
//! running). Screenshots are kept in `artifacts/dashboard/` (or `$ENCLII_ARTIFACTS_DIR`).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::pipeline::{BASE_IMAGE, call, release, repository, server, service, step, wait_finished, wait_until};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn an_operator_watches_a_pipeline_and_retries_a_dead_job_in_the_browser() {
    let e2e = workspace().join("api/dashboard/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix api/dashboard/e2e` (.ci/infra.sh does)"
    );
    // The build sleeps so that the browser sees it run (a marker of this run keeps BuildKit's
    // cache from answering at once).
    let marker = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (url, sha) = repository(&[(
        "Dockerfile",
        &format!("FROM {BASE_IMAGE}\nRUN echo compiling the shop {marker} && sleep 8\nCMD [\"true\"]\n"),
    )]);
    let server = server(&[]);
    service(&server, &url, json!({}));

    // A dead job: a service whose repository does not exist fails its clone for good.
    let broken = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": "shop", "environment": "prod", "name": "broken"},
        "spec": {"source": {"git": {"repository": "file:///nonexistent/enclii/repo", "branch": "main"}},
                 "runtime": {"ports": [3000]}}
    });
    let (status, body) = call(&server, "POST", "/v1/projects/shop/services", broken);
    assert_eq!(status, 201, "{body}");
    // Two: the operator retries one; a read-only token is refused retrying the other.
    let dead_clone = |sha: &str| {
        let (status, body) = call(
            &server,
            "POST",
            "/v1/projects/shop/services/broken/releases",
            json!({ "git_sha": sha }),
        );
        assert_eq!(status, 202, "{body}");
        let failed = wait_finished(
            &server,
            body["release"]["id"].as_i64().unwrap(),
            Duration::from_secs(90),
        );
        let job = step(&failed, "clone")["job_id"].as_i64().unwrap();
        wait_until(Duration::from_secs(30), "the clone job to be dead", || {
            call(&server, "GET", &format!("/v1/jobs/{job}"), Value::Null).1["state"] == "dead"
        });
        job
    };
    let dead_job = dead_clone("4f1c0e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e");
    let refused_job = dead_clone("5f1c0e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e");
    let refused_before = call(&server, "GET", &format!("/v1/jobs/{refused_job}"), Value::Null).1;

    let first_end = call(&server, "GET", &format!("/v1/jobs/{dead_job}"), Value::Null).1["finished_at"].clone();

    let artifacts = std::env::var_os("ENCLII_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("artifacts/dashboard"));
    let out = Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .env("ENCLII_URL", format!("http://{}", server.addr))
        .env("ENCLII_TOKEN", support::TOKEN)
        .env("PROJECT", "shop")
        .env("SERVICE", "api")
        .env("GIT_SHA", &sha)
        .env("DEAD_JOB_ID", dead_job.to_string())
        .env("REFUSED_JOB_ID", refused_job.to_string())
        .env("ARTIFACTS_DIR", &artifacts)
        .output()
        .expect("node runs (Node.js 20 is on this machine kind)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed ({}; screenshots in {}):\n{}\n{stdout}",
        out.status,
        artifacts.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the browser run printed no summary ({e}): {stdout}"));

    // The page showed the run progress live: running, then succeeded; the build step went from
    // running to completed in front of the browser, and its log showed the build's output.
    let runs: Vec<&str> = seen["pipelineStates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(runs.first(), Some(&"running"), "{seen}");
    assert_eq!(runs.last(), Some(&"succeeded"), "{seen}");
    let build_states: Vec<&str> = seen["stepStates"]["build"]
        .as_array()
        .unwrap_or_else(|| panic!("no build step seen: {seen}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        build_states.contains(&"running") && build_states.last() == Some(&"completed"),
        "the build step was seen running, then completed: {build_states:?}"
    );
    assert!(seen["stepLog"].as_str().unwrap().trim().len() > 10, "{seen}");
    // A pending custom domain shows the record that proves it, and "Check now" queued a check.
    let domain_row = seen["domainRow"].as_str().unwrap();
    // Pending and never ordered: its HTTPS cell says so.
    assert_eq!(seen["domainCertificate"], "none", "{seen}");
    assert!(
        domain_row.contains("pending") && domain_row.contains("TXT _enclii-challenge.shop.example.com"),
        "{seen}"
    );
    assert!(
        seen["domainChecked"].as_str().unwrap().contains("Check now: done"),
        "{seen}"
    );
    assert!(
        seen["wrongTokenMessage"].as_str().unwrap().contains("Sign-in failed"),
        "{seen}"
    );
    assert!(
        seen["aliveWorkers"].as_i64().unwrap() >= 1,
        "the worker's heartbeat shows: {seen}"
    );
    assert_eq!(seen["consoleErrors"], json!([]), "no script errors in the page");
    assert_eq!(
        seen["secretsInUrls"],
        json!([]),
        "no token in any URL the page requested"
    );
    assert_eq!(seen["tokenAfterSignOut"], Value::Null, "signing out forgets the token");
    // The read-only token's actions were refused with the API's reason, shown as an alert.
    for (key, scope) in [("pauseRefused", "govern"), ("retryRefused", "deploy")] {
        let shown = seen[key].as_str().unwrap_or_default();
        assert!(
            shown.contains("refused") && shown.contains(&format!("lacks the `{scope}` scope")),
            "{key}: {seen}"
        );
    }
    assert_eq!(seen["pauseRefusedRole"], "alert", "{seen}");
    assert_eq!(seen["whoReadOnly"], "user:admin (scopes: read)", "{seen}");
    assert_eq!(seen["stateAfterRefusedPause"], "running", "{seen}");
    assert_eq!(
        seen["focusAfterRedraw"], "shop",
        "focus kept across a live redraw: {seen}"
    );
    let refused_after = call(&server, "GET", &format!("/v1/jobs/{refused_job}"), Value::Null).1;
    assert_eq!(refused_after, refused_before, "the refused retry changed nothing");
    // A `javascript:` URL from data never becomes a link; a live log pane is capped.
    assert_eq!(
        (&seen["javascriptLinks"], &seen["httpsLinks"]),
        (&json!(0), &json!(1)),
        "{seen}"
    );
    assert_eq!(seen["logLines"], 2000, "{seen}");
    // What each worker cannot run (no deploy target here), and why a release waits.
    let cannot_run = seen["cannotRun"].to_string();
    assert!(
        cannot_run.contains("deploy") && cannot_run.contains("no deploy target"),
        "the workers view shows what a worker cannot run: {seen}"
    );
    assert_eq!(
        seen["releaseWaiting"],
        "waiting: no worker can run clone (no Docker engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST)",
        "{seen}"
    );
    let r = release(&server, seen["release"].as_i64().unwrap());
    assert_eq!(r["status"], "ready", "{r}");

    // The actions went through the API, which audited them under the signed-in token's subject.
    let (status, audit) = call(&server, "GET", "/v1/audit?project=shop&limit=100", Value::Null);
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for wanted in [
        ("job.retry".to_string(), dead_job.to_string()),
        ("queue.pause".into(), "shop".into()),
        ("queue.resume".into(), "shop".into()),
    ] {
        // Exactly once: the read-only token's refused Retry and Pause left no trace.
        let times = actions.iter().filter(|a| **a == wanted).count();
        assert_eq!(times, 1, "{wanted:?} audited once: {actions:?}");
    }
    assert!(
        !actions.contains(&("job.retry".to_string(), refused_job.to_string())),
        "{actions:?}"
    );
    // The retried job ran again, with a fresh set of attempts.
    let mut job = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        job = call(&server, "GET", &format!("/v1/jobs/{dead_job}"), Value::Null).1;
        if job["finished_at"] != first_end && ["dead", "completed"].contains(&job["state"].as_str().unwrap_or("")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(job["finished_at"], first_end, "the retried job ran again: {job}");
    let (_, controls) = call(&server, "GET", "/v1/queue/controls", Value::Null);
    assert_eq!(controls[0]["paused"], false, "resumed: {controls}");
    for shot in [
        "02-projects",
        "04-pipeline-running",
        "05-pipeline-succeeded",
        "06-queue",
        "07-dead-job-retried",
        "10-refused-read-only",
    ] {
        assert!(artifacts.join(format!("{shot}.png")).exists(), "screenshot {shot}");
    }
}
