//! Pipeline runs and the releases they build, through the HTTP router, on PostgreSQL and on
//! SQLite: cancelling a run — or one of its steps, which cancels the run — fails the release it
//! builds (a step cancelled alone used to leave its release `building` for ever, which the
//! reconciliation would now build again); the project's pipeline list shows each release with
//! its own run.

mod support;

use axum::http::StatusCode;
use support::{Db, api, sha};

async fn cancelling_a_step_or_its_run_fails_the_release_it_builds(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let build = |n: u32| format!(r#"{{"git_sha":"{}"}}"#, sha(n));
    let started = |n: u32| {
        let t = &t;
        async move {
            let r = t
                .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(n)))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
            (
                r.body["release"]["id"].as_i64().unwrap(),
                r.body["pipeline"].as_i64().unwrap(),
            )
        }
    };
    let release_status = |id: i64| {
        let t = &t;
        async move {
            let r = t.admin("GET", &format!("/v1/releases/{id}"), None).await;
            (
                r.body["status"].as_str().unwrap().to_string(),
                r.body["failure"].clone(),
            )
        }
    };

    let (first, first_run) = started(1).await;
    let run = t.admin("GET", &format!("/v1/pipelines/{first_run}"), None).await;
    let clone = run.body["steps"][0]["job"].as_i64().unwrap();
    let r = t.admin("POST", &format!("/v1/jobs/{clone}/cancel"), None).await;
    assert_eq!(r.body["result"], "cancelled", "{r:?}");
    let (status, failure) = release_status(first).await;
    assert_eq!(status, "failed");
    assert_eq!(failure, "cancelled by user:admin");

    let (second, second_run) = started(2).await;
    let r = t
        .admin("POST", &format!("/v1/pipelines/{second_run}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(release_status(second).await.0, "failed");

    let (third, third_run) = started(3).await;
    let list = t.admin("GET", "/v1/projects/shop/pipelines", None).await;
    let runs: Vec<(i64, i64)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["release"]["id"].as_i64().unwrap(),
                r["pipeline"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [(third, third_run), (second, second_run), (first, first_run)]);
}

on_both_databases!(cancelling_a_step_or_its_run_fails_the_release_it_builds);
