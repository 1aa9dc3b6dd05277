//! Timetable and Waybill through the HTTP router, on PostgreSQL and on SQLite: one-off job runs
//! (who may start them, what an unknown job or a paused environment answers), the run history,
//! the cost report and its `since`, and resuming a paused environment.

mod support;

use axum::http::StatusCode;
use enclii_store::{EnvironmentChange, NewCostSample};
use serde_json::json;
use support::{Db, api, service_yaml};

fn with_jobs(yaml: String) -> String {
    format!(
        "{yaml}  jobs: [ {{ name: report, schedule: \"0 2 * * *\", args: [\"./report\"] }}, {{ name: cleanup, schedule: \"*/10 * * * *\", args: [\"./cleanup\"] }} ]\n"
    )
}

async fn one_off_runs_and_their_history(db: Db) {
    let t = api(db).await;
    let r = t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = t
        .apply_yaml(&t.admin, "shop", &with_jobs(service_yaml("shop", "api", "org/shop")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let developer = t.user("user:dev", "Developer", "shop").await;
    let reader = t.user("user:reader", "ReadOnly", "shop").await;

    let r = t
        .call(
            &developer,
            "POST",
            "/v1/projects/shop/services/api/jobs/report/runs",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(
        (
            &r.body["job"],
            &r.body["trigger"],
            &r.body["status"],
            &r.body["environment"],
            &r.body["created_by"]
        ),
        (
            &json!("report"),
            &json!("manual"),
            &json!("queued"),
            &json!("prod"),
            &json!("user:dev")
        )
    );
    let job = r.body["queue_job_id"].as_i64().unwrap();
    let queued = t.admin("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(queued.body["kind"], "job-run", "{queued:?}");

    let r = t
        .call(&reader, "POST", "/v1/projects/shop/services/api/jobs/report/runs", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.content_type, "application/problem+json");

    let r = t
        .admin("POST", "/v1/projects/shop/services/api/jobs/nope/runs", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("no job `nope`") && detail.contains("report, cleanup"),
        "{detail}"
    );

    t.admin("POST", "/v1/projects/shop/services/api/jobs/cleanup/runs", None)
        .await;
    let r = t
        .call(&reader, "GET", "/v1/projects/shop/services/api/jobs/runs", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let jobs: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["cleanup", "report"], "newest first");
    let r = t
        .call(
            &reader,
            "GET",
            "/v1/projects/shop/services/api/jobs/runs?job=report&limit=5",
            None,
        )
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{r:?}");
    let r = t.admin("GET", "/v1/projects/shop/services/nope/jobs/runs", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A paused environment refuses runs until an Admin resumes it.
    t.store.pause_environment("user:admin", "shop", "stage").await.unwrap();
    let r = t
        .apply_yaml(
            &t.admin,
            "shop",
            &with_jobs(service_yaml("shop", "web", "org/web").replace("environment: prod", "environment: stage")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = t
        .admin("POST", "/v1/projects/shop/services/web/jobs/report/runs", None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("/environments/stage/resume"),
        "{r:?}"
    );
    let envs = t.admin("GET", "/v1/projects/shop/environments", None).await;
    let stage = envs
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "stage")
        .unwrap();
    assert!(stage["paused_at"].is_i64(), "{stage}");
    let r = t
        .call(&developer, "POST", "/v1/projects/shop/environments/stage/resume", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "Admin and up");
    let r = t
        .admin("POST", "/v1/projects/shop/environments/stage/resume", None)
        .await;
    assert_eq!(
        (r.status, &r.body["paused_at"]),
        (StatusCode::OK, &json!(null)),
        "{r:?}"
    );
    let r = t
        .admin("POST", "/v1/projects/shop/services/web/jobs/report/runs", None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let r = t
        .admin("POST", "/v1/projects/shop/environments/nope/resume", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn the_cost_report(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let reader = t.user("user:reader", "ReadOnly", "shop").await;
    let now = chrono::Utc::now().timestamp_millis();
    for (env, service, hours_ago, cents) in [
        ("prod", "api", 1, 12.5),
        ("prod", "api", 2, 7.5),
        ("stage", "api", 1, 1.0),
        ("prod", "api", 24 * 40, 1000.0),
    ] {
        let sample = NewCostSample {
            project: "shop".into(),
            environment: env.into(),
            service: service.into(),
            at: now - hours_ago * 3_600_000,
            interval_secs: 300,
            cpu_seconds: 60.0,
            ram_gib_hours: 0.25,
            cost_cents: cents,
            ..Default::default()
        };
        t.store.insert_cost_sample(&sample).await.unwrap();
    }
    let r = t.call(&reader, "GET", "/v1/cost?project=shop&since=30d", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["total_cents"], json!(21.0), "{r:?}");
    let lines = r.body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            &lines[0]["environment"],
            &lines[0]["service"],
            &lines[0]["cost_cents"],
            &lines[0]["samples"]
        ),
        (&json!("prod"), &json!("api"), &json!(20.0), &json!(2))
    );
    assert_eq!(lines[0]["cpu_seconds"], json!(120.0));
    let r = t.admin("GET", "/v1/cost?project=shop&since=90m", None).await;
    assert_eq!(r.body["total_cents"], json!(13.5), "{r:?}");
    let r = t.admin("GET", "/v1/cost?project=shop", None).await;
    assert_eq!(r.body["total_cents"], json!(21.0), "default: 30 days");
    let since = chrono::DateTime::from_timestamp_millis(now - 100 * 24 * 3_600_000)
        .unwrap()
        .to_rfc3339();
    let r = t
        .admin(
            "GET",
            &format!("/v1/cost?project=shop&since={}", since.replace('+', "%2B")),
            None,
        )
        .await;
    assert_eq!(r.body["total_cents"], json!(1021.0), "{r:?}");

    for bad in ["30", "30x", "yesterday", "-3d"] {
        let r = t
            .admin("GET", &format!("/v1/cost?project=shop&since={bad}"), None)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {r:?}");
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(r.body["errors"][0]["path"], "since", "{r:?}");
        assert!(r.body["errors"][0]["message"].as_str().unwrap().contains("`30d`"));
    }
    let r = t.admin("GET", "/v1/cost", None).await;
    assert_eq!(
        (r.status, &r.body["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("project"))
    );
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"elsewhere"}"#)).await;
    let outsider = t.user("user:other", "Owner", "elsewhere").await;
    let r = t.call(&outsider, "GET", "/v1/cost?project=shop", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t.admin("GET", "/v1/cost?project=nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The environment listing shows a budget's pause.
    let budget = EnvironmentChange {
        budget_cents: Some(10),
        ..Default::default()
    };
    t.store
        .update_environment("user:admin", "shop", "stage", &budget)
        .await
        .unwrap();
    t.store
        .insert_cost_sample(&NewCostSample {
            project: "shop".into(),
            environment: "stage".into(),
            service: "api".into(),
            at: now,
            cost_cents: 20.0,
            ..Default::default()
        })
        .await
        .unwrap();
    t.store.budget_check("shop", "stage", now).await.unwrap();
    let envs = t.call(&reader, "GET", "/v1/projects/shop/environments", None).await;
    let stage = envs
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "stage")
        .unwrap();
    assert!(stage["paused_at"].is_i64(), "{stage}");
}

on_both_databases!(one_off_runs_and_their_history, the_cost_report);
