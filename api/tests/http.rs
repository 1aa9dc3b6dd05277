//! The HTTP API's health, metrics and queue controls through the router, on the embedded SQLite store.

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Db, TestApi, api};

async fn call(t: &TestApi, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String, Value) {
    let r = t.admin(method, uri, body).await;
    (r.status, r.content_type, r.body)
}

#[tokio::test]
async fn health_and_readiness() {
    let app = api(Db::Sqlite).await;
    assert_eq!(call(&app, "GET", "/health/live", None).await.0, StatusCode::OK);
    let (status, _, body) = call(&app, "GET", "/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["queue"].as_str(), body["database"].as_str()),
        (Some("sqlite"), Some("sqlite"))
    );
}

#[tokio::test]
async fn enqueue_inspect_cancel_and_retry_a_job() {
    let app = api(Db::Sqlite).await;
    let body = r#"{"kind":"ping","project":"demo","payload":{"message":"hi"},"unique_key":"k1"}"#;
    let (status, _, created) = call(&app, "POST", "/v1/jobs", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, again) = call(&app, "POST", "/v1/jobs", Some(body)).await;
    assert_eq!(
        (status, &again["id"], &again["duplicate"]),
        (StatusCode::OK, &created["id"], &json!(true))
    );
    let id = created["id"].as_i64().unwrap();
    let (status, _, job) = call(&app, "GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("available")));
    let (_, _, cancelled) = call(&app, "POST", &format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(cancelled["result"], "cancelled");
    let (status, _, _) = call(&app, "POST", &format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ctype, problem) = call(&app, "POST", &format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(ctype, "application/problem+json");
    assert!(problem["detail"].as_str().unwrap().contains("only dead or cancelled"));
}

#[tokio::test]
async fn bad_input_gets_precise_problems_and_changes_nothing() {
    let app = api(Db::Sqlite).await;
    let backend = app.store.queue();
    let cases = [
        (
            r#"{"kind":"bulid","project":"p"}"#,
            "invalid_job",
            "unknown job kind `bulid`",
        ),
        (
            r#"{"kind":"deploy","project":"p","payload":{"service":"api"}}"#,
            "invalid_job",
            "missing field `environment`",
        ),
        (
            r#"{"kind":"ping","project":"p","colour":1}"#,
            "invalid_body",
            "unknown field `colour`",
        ),
        (r#"{"kind":"ping""#, "malformed_json", "EOF"),
        (
            r#"{"kind":"ping","project":""}"#,
            "invalid_job",
            "`project` must not be empty",
        ),
    ];
    for (body, code, detail) in cases {
        let (status, ctype, problem) = call(&app, "POST", "/v1/jobs", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["code"], code, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{body}: {problem}"
        );
    }
    let huge = format!(
        r#"{{"kind":"ping","project":"p","payload":{{"message":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    assert_eq!(
        call(&app, "POST", "/v1/jobs", Some(&huge)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(backend.stats().await.unwrap().depth.is_empty(), "nothing was enqueued");
    let (status, _, problem) = call(&app, "GET", "/v1/jobs/999", None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn metrics_export_queue_depth_for_autoscalers() {
    let app = api(Db::Sqlite).await;
    call(
        &app,
        "POST",
        "/v1/jobs",
        Some(r#"{"kind":"ping","project":"metrics-demo"}"#),
    )
    .await;
    let (status, _, Value::String(text)) = call(&app, "GET", "/metrics", None).await else {
        panic!("metrics are text")
    };
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"enclii_queue_depth{kind="ping",project="metrics-demo",state="available"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("enclii_queue_oldest_available_seconds{kind=\"ping\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn project_limits_are_set_through_the_api() {
    let app = api(Db::Sqlite).await;
    let (status, _, _) = call(&app, "POST", "/v1/projects", Some(r#"{"slug":"solarpunk"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = call(
        &app,
        "PUT",
        "/v1/projects/solarpunk/limits",
        Some(r#"{"max_running":2,"jobs_per_minute":30}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["max_running"], 2);
}
