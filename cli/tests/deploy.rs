//! The Docker deploy target end to end, through the `enclii` binary: real builds (BuildKit on the
//! Docker engine, a local registry and S3 server, as in `pipeline.rs`) deployed as real
//! containers behind the Junctions router, which the tests call by host name. Covers a first
//! deploy, a canary that passes and is promoted, a canary whose release answers 500s and is rolled
//! back automatically (TC-02, with a short analysis window), rollback to an earlier release,
//! quota refusal, a pull request's preview from webhook to URL to teardown, and deleting a
//! service, an environment or a project.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::deploy::*;
use support::pipeline::*;

#[test]
fn canary_promotes_a_good_release_rolls_back_a_failing_one_and_rollback_restores_an_old_one() {
    let _cleanup = Cleanup("canary");
    let p = platform(
        "canary",
        json!({
            "routes": [{"host": "api.shop.test"}],
            "deploy": {"strategy": "canary", "steps": [50, 100], "analysis": {"maxErrorRate": 0.02, "window": "3s"}}
        }),
    );
    let (server, router) = (&p.server, p.router.as_str());
    let host = "api.shop.test";
    let v1_sha = head(&p);
    let v1 = ready_release(&p, &v1_sha);

    // First deploy: nothing runs yet, so the canary strategy deploys straight to 100%.
    let first = deploy(&p, v1, "deployments");
    let d = wait_status(server, first["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(
        d["url"],
        format!("http://{host}:{}/", router.rsplit(':').next().unwrap())
    );
    assert_eq!(get(router, host, "/"), (200, "v1".into()));
    assert_eq!(get(router, "unknown.test", "/").0, 404);
    // The deploy job itself ends (and is not left holding its lease).
    wait_until(Duration::from_secs(10), "the deploy job completes", || {
        call(server, "GET", &format!("/v1/jobs/{}", d["job_id"]), Value::Null).1["state"] == "completed"
    });

    // A good release: canary at 50%, both versions answer, analysis passes, v2 is promoted.
    let v2_sha = commit(&p.url, &files(&app_files("v2")), &[]);
    let v2 = ready_release(&p, &v2_sha);
    let second = deploy(&p, v2, "deployments");
    let second_id = second["id"].as_i64().unwrap();
    let d = wait_status(server, second_id, &["canary", "succeeded", "failed"], None);
    assert_eq!(d["status"], "canary", "{d}");
    assert_eq!(d["canary_percent"], 50);
    let seen: std::collections::BTreeSet<String> = (0..60).map(|_| get(router, host, "/").1).collect();
    assert_eq!(
        seen,
        ["v1".to_string(), "v2".to_string()].into(),
        "a 50% canary serves both"
    );
    let d = wait_status(
        server,
        second_id,
        &["succeeded", "rolled_back", "failed"],
        Some((router, host)),
    );
    assert_eq!(d["status"], "succeeded", "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .starts_with("promoted after 1 canary step(s)"),
        "{d}"
    );
    assert!((0..20).all(|_| get(router, host, "/") == (200, "v2".into())));
    assert_eq!(
        replicas_of(p.project, v1),
        0,
        "the old stable release is removed on promotion"
    );

    // TC-02: a release that answers 500s is rolled back automatically by its canary analysis.
    let mut broken = app_files("v3");
    broken.retain(|(path, _)| *path != "www/index.html");
    broken.push(("www/cgi-bin/index.cgi", FAILING_CGI.into()));
    let v3_sha = commit(&p.url, &files(&broken), &["www/index.html"]);
    let v3 = ready_release(&p, &v3_sha);
    let third = deploy(&p, v3, "deployments");
    let third_id = third["id"].as_i64().unwrap();
    let d = wait_status(server, third_id, &["canary", "failed"], None);
    assert_eq!(d["status"], "canary", "{d}");
    let d = wait_status(
        server,
        third_id,
        &["succeeded", "rolled_back", "failed"],
        Some((router, host)),
    );
    assert_eq!(d["status"], "rolled_back", "{d}");
    let detail = d["detail"].as_str().unwrap();
    assert!(
        detail.contains("automatic rollback at canary step 1: 5xx rate"),
        "{detail}"
    );
    assert!(detail.contains("exceeds the allowed 2.0%"), "{detail}");
    assert!(
        (0..20).all(|_| get(router, host, "/") == (200, "v2".into())),
        "the stable release serves alone again"
    );
    assert_eq!(replicas_of(p.project, v3), 0, "the failed canary's containers are gone");

    // Rollback to the first release.
    let started = Instant::now();
    let back = deploy(&p, v1, "rollback");
    let d = wait_status(server, back["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    eprintln!("rollback to release {v1} took {:?}", started.elapsed());
    assert_eq!(get(router, host, "/"), (200, "v1".into()));
    assert_eq!(d["reason"], "rollback");

    // Every change is in the audit trail.
    let (status, audit) = call(server, "GET", "/v1/audit?project=canary", Value::Null);
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "deployment.canary",
        "deployment.succeeded",
        "deployment.rolled_back",
        "deployment.rollback",
    ] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}

#[test]
fn a_spec_over_the_environment_quota_is_refused_and_nothing_runs() {
    let _cleanup = Cleanup("quota");
    let p = platform(
        "quota",
        json!({"runtime": {"ports": [3000], "memory": "256Mi", "replicas": {"min": 1, "max": 4}}}),
    );
    let server = &p.server;
    let (status, body) = call(
        server,
        "PATCH",
        "/v1/projects/quota/environments/prod",
        json!({"quota": {"memory": "512Mi"}}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        server,
        "PATCH",
        "/v1/projects/quota/environments/prod",
        json!({"quota": {"memory": "lots"}}),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "quota.memory", "{body}");
    let sha = head(&p);
    let release = ready_release(&p, &sha);
    let d = deploy(&p, release, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(
        d["detail"],
        "spec.runtime.memory × replicas.max = 1Gi exceeds the environment's quota of 512Mi; \
         lower spec.runtime.replicas.max or spec.runtime.memory, or raise the quota"
    );
    assert_eq!(replicas_of(p.project, release), 0);
}

#[test]
fn a_pull_request_gets_a_preview_url_and_closing_it_tears_the_preview_down() {
    let _cleanup = Cleanup("preview");
    let p = platform("preview", json!({}));
    let (server, router) = (&p.server, p.router.as_str());
    let sha = commit(&p.url, &files(&app_files("preview of PR 7")), &[]);
    // The pull request's branch, which the clone step fetches.
    run(Command::new("git")
        .args(["branch", "-f", "feature", &sha])
        .current_dir(p.url.strip_prefix("file://").unwrap()));
    let opened = Instant::now();
    webhook(server, "preview-open-1", &pull_request(&p.url, "opened", 7, &sha));
    let host = "api-preview-7.preview.localhost";
    let deadline = Instant::now() + Duration::from_secs(240);
    while get(router, host, "/").0 != 200 {
        assert!(Instant::now() < deadline, "the preview never answered on {host}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("preview served {:?} after the webhook", opened.elapsed());
    assert_eq!(get(router, host, "/"), (200, "preview of PR 7".into()));
    let (_, deployments) = call(
        server,
        "GET",
        "/v1/projects/preview/deployments?service=api",
        Value::Null,
    );
    let preview = &deployments[0];
    assert_eq!(preview["environment"], "preview-7", "{deployments}");
    assert_eq!(preview["status"], "succeeded", "{preview}");
    let port = router.rsplit(':').next().unwrap();
    assert_eq!(preview["url"], format!("http://{host}:{port}/"));
    let (_, routes) = call(server, "GET", "/v1/projects/preview/routes", Value::Null);
    assert!(routes.as_array().unwrap().iter().any(|r| r["host"] == host), "{routes}");

    webhook(server, "preview-close-1", &pull_request(&p.url, "closed", 7, &sha));
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(router, host, "/").0 != 404 {
        assert!(Instant::now() < deadline, "the preview still answers on {host}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(Duration::from_secs(30), "the preview environment is forgotten", || {
        let (_, environments) = call(server, "GET", "/v1/projects/preview/environments", Value::Null);
        !environments
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "preview-7")
    });
    let (_, routes) = call(server, "GET", "/v1/projects/preview/routes", Value::Null);
    assert!(
        !routes.as_array().unwrap().iter().any(|r| r["host"] == host),
        "{routes}"
    );
    let (_, d) = call(
        server,
        "GET",
        &format!("/v1/deployments/{}", preview["id"]),
        Value::Null,
    );
    assert_eq!(d["status"], "torn_down", "{d}");
    let out = run(Command::new(DOCKER).args(["ps", "-aq", "--filter", "label=dev.enclii.project=preview"]));
    assert!(out.trim().is_empty(), "preview containers left: {out}");
}

/// Volumes of `project` on the engine.
fn volumes_of(project: &str) -> Vec<String> {
    let out = run(Command::new(DOCKER).args(["volume", "ls", "-q", "--filter", &format!("name=enclii-{project}-")]));
    out.lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Waits for each `teardown` job of a deletion to complete.
fn wait_teardown(server: &Server, deletion: &Value) {
    let jobs = deletion["teardown_jobs"].as_array().unwrap();
    assert!(!jobs.is_empty(), "{deletion}");
    for job in jobs {
        wait_until(Duration::from_secs(60), "the teardown job completes", || {
            call(server, "GET", &format!("/v1/jobs/{job}"), Value::Null).1["state"] == "completed"
        });
    }
}

/// Deleting a service or a project leaves nothing on the engine: no container, no route, no
/// volume — except the volumes a deletion was asked to keep.
#[test]
fn deleting_a_service_or_a_project_leaves_nothing_behind() {
    let _cleanup = Cleanup("lifecycle");
    let volume = json!([{"name": "data", "mountPath": "/data", "size": "64Mi"}]);
    let p = platform(
        "lifecycle",
        json!({"routes": [{"host": "api.life.test"}], "volumes": volume}),
    );
    let (server, router) = (&p.server, p.router.as_str());
    let (_, api) = call(server, "GET", "/v1/projects/lifecycle/services/api", Value::Null);
    let mut worker = api["spec"].clone();
    worker["metadata"]["name"] = "worker".into();
    worker["spec"]["routes"] = json!([{"host": "worker.life.test"}]);
    let (status, body) = call(server, "POST", "/v1/projects/lifecycle/services", worker);
    assert_eq!(status, 201, "{body}");
    let sha = head(&p);
    for service in ["api", "worker"] {
        let release = ready_release_of(&p, service, &sha);
        let d = deploy_of(&p, service, release, "deployments");
        let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
        assert_eq!(d["status"], "succeeded", "{d}");
    }
    assert_eq!(get(router, "api.life.test", "/").0, 200);
    assert_eq!(get(router, "worker.life.test", "/").0, 200);
    assert_eq!(volumes_of("lifecycle").len(), 2, "{:?}", volumes_of("lifecycle"));

    // The service goes, its volume stays (asked for); the other service is untouched.
    let (status, deletion) = call(
        server,
        "DELETE",
        "/v1/projects/lifecycle/services/api?keep_volumes=true",
        Value::Null,
    );
    assert_eq!(status, 202, "{deletion}");
    wait_teardown(server, &deletion);
    assert_eq!(get(router, "api.life.test", "/").0, 404);
    assert_eq!(get(router, "worker.life.test", "/").0, 200);
    let api_containers = run(Command::new(DOCKER).args([
        "ps",
        "-aq",
        "--filter",
        "label=dev.enclii.project=lifecycle",
        "--filter",
        "label=dev.enclii.service=api",
    ]));
    assert!(
        api_containers.trim().is_empty(),
        "api containers left: {api_containers}"
    );
    assert_eq!(
        volumes_of("lifecycle"),
        ["enclii-lifecycle-prod-api-data", "enclii-lifecycle-prod-worker-data"]
    );

    // The project goes: every container, route and (not kept) volume with it.
    let (status, deletion) = call(server, "DELETE", "/v1/projects/lifecycle", Value::Null);
    assert_eq!(status, 202, "{deletion}");
    wait_teardown(server, &deletion);
    assert_eq!(get(router, "worker.life.test", "/").0, 404);
    let left = run(Command::new(DOCKER).args(["ps", "-aq", "--filter", "label=dev.enclii.project=lifecycle"]));
    assert!(left.trim().is_empty(), "containers left: {left}");
    assert_eq!(
        volumes_of("lifecycle"),
        ["enclii-lifecycle-prod-api-data"],
        "only the kept volume"
    );
    let (_, audit) = call(server, "GET", "/v1/audit?action=service.delete", Value::Null);
    assert_eq!(audit[0]["diff"]["keep_volumes"], true, "{audit}");
}

/// The project's containers labelled with `environment`.
fn containers_in(project: &str, environment: &str) -> String {
    run(Command::new(DOCKER).args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.enclii.project={project}"),
        "--filter",
        &format!("label=dev.enclii.environment={environment}"),
    ]))
}

/// Deleting an environment leaves nothing of it on the engine — no container, no route, no
/// volume unless kept on request — while the service keeps serving in the others.
#[test]
fn deleting_an_environment_leaves_nothing_behind_and_the_others_serving() {
    let _cleanup = Cleanup("envdel");
    let volume = json!([{"name": "data", "mountPath": "/data", "size": "64Mi"}]);
    let p = platform(
        "envdel",
        json!({"routes": [{"host": "api.envdel.test"}], "volumes": volume}),
    );
    let (server, router) = (&p.server, p.router.as_str());
    let release = ready_release(&p, &head(&p));
    let d = deploy(&p, release, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    // The same release in stage, behind a route of its own there.
    let to_stage = || {
        let (status, body) = call(
            server,
            "POST",
            "/v1/projects/envdel/routes",
            json!({"service": "api", "environment": "stage", "host": "api.stage.envdel.test"}),
        );
        assert_eq!(status, 201, "{body}");
        let (status, d) = call(
            server,
            "POST",
            "/v1/projects/envdel/services/api/deployments",
            json!({"release": release, "environment": "stage"}),
        );
        assert_eq!(status, 202, "{d}");
        let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_eq!(get(router, "api.stage.envdel.test", "/"), (200, "v1".into()));
        assert!(!containers_in("envdel", "stage").trim().is_empty());
        d
    };
    let staged = to_stage();
    let both = ["enclii-envdel-prod-api-data", "enclii-envdel-stage-api-data"];
    assert_eq!(volumes_of("envdel"), both);
    let prod_containers = containers_in("envdel", "prod");
    assert!(!prod_containers.trim().is_empty());
    let prod_untouched = || {
        assert_eq!(get(router, "api.envdel.test", "/"), (200, "v1".into()));
        assert_eq!(
            containers_in("envdel", "prod"),
            prod_containers,
            "prod's replicas are the same"
        );
    };

    // Stage goes; its volume stays (asked for).
    let (status, deletion) = call(
        server,
        "DELETE",
        "/v1/projects/envdel/environments/stage?keep_volumes=true",
        Value::Null,
    );
    assert_eq!(status, 202, "{deletion}");
    wait_teardown(server, &deletion);
    assert_eq!(get(router, "api.stage.envdel.test", "/").0, 404);
    let left = containers_in("envdel", "stage");
    assert!(left.trim().is_empty(), "stage containers left: {left}");
    assert_eq!(volumes_of("envdel"), both, "the kept volume");
    assert_eq!(
        deployment(server, staged["id"].as_i64().unwrap())["status"],
        "torn_down"
    );
    prod_untouched();

    // Created and deployed again, then deleted without keeping: its volume goes too.
    let (status, body) = call(
        server,
        "POST",
        "/v1/projects/envdel/environments",
        json!({"name": "stage"}),
    );
    assert_eq!(status, 201, "{body}");
    to_stage();
    let (status, deletion) = call(server, "DELETE", "/v1/projects/envdel/environments/stage", Value::Null);
    assert_eq!(status, 202, "{deletion}");
    wait_teardown(server, &deletion);
    assert_eq!(get(router, "api.stage.envdel.test", "/").0, 404);
    let left = containers_in("envdel", "stage");
    assert!(left.trim().is_empty(), "stage containers left: {left}");
    assert_eq!(volumes_of("envdel"), ["enclii-envdel-prod-api-data"]);
    prod_untouched();
    let (_, audit) = call(
        server,
        "GET",
        "/v1/audit?project=envdel&action=environment.delete",
        Value::Null,
    );
    let kept: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["diff"]["keep_volumes"])
        .collect();
    assert_eq!(kept, [&json!(false), &json!(true)], "{audit}");
}

/// TC-04: a cron job fires on schedule with the deployed release's image, its output is in the
/// job's log, and a failed run is retried (the retry sees the state the first attempt left in
/// the service's volume); a one-off run of the same job succeeds.
#[test]
fn a_cron_job_fires_on_schedule_logs_its_output_and_is_retried_on_failure() {
    remove_containers("cron");
    let _cleanup = Cleanup("cron");
    let p = platform(
        "cron",
        json!({"volumes": [{"name": "state", "mountPath": "/data", "size": "1Gi"}]}),
    );
    let server = &p.server;
    let sha = head(&p);
    let release = ready_release(&p, &sha);
    let d = deploy(&p, release, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");

    // Now the job: every minute; the first attempt fails, the retry succeeds.
    let script = "if [ -f /data/ran ]; then echo \"retry found the marker; report done\"; \
                  else touch /data/ran; echo \"first attempt: marker written, failing\"; exit 3; fi";
    let document = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": "cron", "environment": "prod", "name": "api"},
        "spec": {"source": {"git": {"repository": p.url, "branch": "main"}},
                 "runtime": {"ports": [3000], "memory": "64Mi", "cpu": "250m"},
                 "health": {"readiness": {"httpGet": "/healthz"}},
                 "volumes": [{"name": "state", "mountPath": "/data", "size": "1Gi"}],
                 "jobs": [{"name": "report", "schedule": "* * * * *", "args": ["sh", "-c", script]}]}
    });
    let (status, body) = call(server, "POST", "/v1/projects/cron/services", document);
    assert!(status == 200 || status == 201, "{status} {body}");

    let runs = || {
        call(
            server,
            "GET",
            "/v1/projects/cron/services/api/jobs/runs?job=report",
            Value::Null,
        )
        .1
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    let cron_run = loop {
        let list = runs();
        if let Some(done) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "cron" && ["succeeded", "failed"].contains(&r["status"].as_str().unwrap()))
        {
            break done.clone();
        }
        assert!(Instant::now() < deadline, "no cron run finished: {list}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(cron_run["status"], "succeeded", "{cron_run}");
    assert_eq!(
        cron_run["attempts"], 2,
        "the failed first attempt was retried: {cron_run}"
    );
    assert_eq!(cron_run["exit_code"], 0, "{cron_run}");
    let job = cron_run["queue_job_id"].as_i64().unwrap();
    let (status, log) = call(server, "GET", &format!("/v1/jobs/{job}/logs"), Value::Null);
    assert_eq!(status, 200, "{log}");
    let lines: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    let text = lines.join("\n");
    assert!(text.contains("first attempt: marker written, failing"), "{text}");
    assert!(text.contains("exited with code 3; the queue retries it"), "{text}");
    assert!(text.contains("retry found the marker; report done"), "{text}");

    // A one-off run of the same job.
    let (status, body) = call(
        server,
        "POST",
        "/v1/projects/cron/services/api/jobs/report/runs",
        Value::Null,
    );
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(60), "the one-off run finishes", || {
        runs()
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id && r["status"] == "succeeded")
    });
    wait_until(
        Duration::from_secs(10),
        "job containers are removed after their run",
        || {
            let filters = [
                "--filter",
                "label=dev.enclii.project=cron",
                "--filter",
                "label=dev.enclii.role=job",
            ];
            run(Command::new(DOCKER).args(["ps", "-aq"]).args(filters))
                .trim()
                .is_empty()
        },
    );
}

/// Budgets act: a `dev` environment whose month's cost passes its budget is paused — its
/// service stops and its routes answer 503 — and the cost report shows what was spent.
#[test]
fn a_non_prod_environment_over_its_budget_is_paused() {
    remove_containers("budget");
    let _cleanup = Cleanup("budget");
    // 1 GiB of volume at 100¢ per GiB-hour: the first 5-minute sample costs ~8¢, over a 5¢ budget.
    let p = platform_in(
        "budget",
        "dev",
        json!({"routes": [{"host": "api.budget.test"}],
               "volumes": [{"name": "state", "mountPath": "/data", "size": "1Gi"}]}),
        &[
            ("ENCLII_COST_EVERY_SECONDS", "10"),
            ("ENCLII_PRICE_VOLUME_GIB_HOUR_CENTS", "100"),
        ],
    );
    let (server, router) = (&p.server, p.router.as_str());
    let sha = head(&p);
    let release = ready_release(&p, &sha);
    let d = deploy(&p, release, "deployments");
    let d = wait_status(server, d["id"].as_i64().unwrap(), &["succeeded", "failed"], None);
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(get(router, "api.budget.test", "/").0, 200);
    // The budget once it serves: set before, a cost sample (every 10 s) may pause the
    // environment between the deployment's success and the request above (a loaded machine).
    let (status, body) = call(
        server,
        "PATCH",
        "/v1/projects/budget/environments/dev",
        json!({"budget_cents": 5}),
    );
    assert_eq!(status, 200, "{body}");

    wait_until(
        Duration::from_secs(60),
        "the environment is paused by its budget",
        || {
            let (_, environments) = call(server, "GET", "/v1/projects/budget/environments", Value::Null);
            environments
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "dev" && !e["paused_at"].is_null())
        },
    );
    wait_until(Duration::from_secs(30), "the paused service answers 503", || {
        get(router, "api.budget.test", "/").0 == 503
    });
    // Stopped with the engine's grace period (httpd as PID 1 ignores SIGTERM, so ~10 s).
    wait_until(Duration::from_secs(30), "the service's containers are stopped", || {
        replicas_of("budget", release) == 0
    });
    let (status, report) = call(server, "GET", "/v1/cost?project=budget&since=1h", Value::Null);
    assert_eq!(status, 200, "{report}");
    assert!(report["total_cents"].as_f64().unwrap() > 5.0, "{report}");
    assert_eq!(report["lines"][0]["environment"], "dev", "{report}");
    assert!(
        report["lines"][0]["egress_gib"].as_f64().unwrap() > 0.0,
        "the answer sent counts as egress: {report}"
    );
    let (_, audit) = call(server, "GET", "/v1/audit?project=budget", Value::Null);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "budget.exceeded"),
        "{audit}"
    );
}
