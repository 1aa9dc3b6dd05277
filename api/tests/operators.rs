//! The operators' queue views and controls through the HTTP router, on PostgreSQL and on SQLite:
//! a paused project's jobs are not claimed (and its limits come back on resume), dead jobs are
//! listed and retried, throughput counts what finished, workers show their heartbeats, and bad
//! queries get a hint.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use enclii_queue::{Ack, ClaimRequest, NewJob, Outcome};
use enclii_store::WorkerBeat;
use serde_json::json;
use support::{Db, TestApi, api};

fn claim_request() -> ClaimRequest {
    ClaimRequest {
        worker: "w-test".into(),
        kinds: vec!["ping".into()],
        limit: 10,
        lease: Duration::from_secs(30),
    }
}

async fn enqueue_pings(t: &TestApi, project: &str, n: usize) -> Vec<i64> {
    let jobs = (0..n).map(|_| NewJob::new("ping", project, json!({}))).collect();
    t.store
        .queue()
        .enqueue(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn pausing_a_project_stops_its_claims_until_resumed(db: Db) {
    let t = api(db).await;
    for slug in ["shop", "blog"] {
        let r = t
            .admin("POST", "/v1/projects", Some(&format!(r#"{{"slug":"{slug}"}}"#)))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/limits",
            Some(r#"{"max_running":1,"jobs_per_minute":null}"#),
        )
        .await;
    assert_eq!((r.status, &r.body["max_running"]), (StatusCode::OK, &json!(1)), "{r:?}");
    let r = t.admin("POST", "/v1/projects/shop/queue/pause", None).await;
    assert_eq!((r.status, &r.body["paused"]), (StatusCode::OK, &json!(true)), "{r:?}");
    assert_eq!(r.body["max_running"], 1, "the limits are kept while paused: {r:?}");

    enqueue_pings(&t, "shop", 3).await;
    enqueue_pings(&t, "blog", 2).await;
    let queue = t.store.queue();
    let claimed = queue.claim(&claim_request()).await.unwrap();
    assert!(
        claimed.iter().all(|j| j.project == "blog") && claimed.len() == 2,
        "only the other project's jobs start: {claimed:?}"
    );
    // Resuming brings back the limit the operator set: one at a time.
    let r = t.admin("POST", "/v1/projects/shop/queue/resume", None).await;
    assert_eq!((r.status, &r.body["paused"]), (StatusCode::OK, &json!(false)), "{r:?}");
    let claimed = queue.claim(&claim_request()).await.unwrap();
    assert_eq!(claimed.len(), 1, "max_running 1 again: {claimed:?}");
    assert_eq!(claimed[0].project, "shop");

    // A limit change while paused keeps the pause.
    t.admin("POST", "/v1/projects/shop/queue/pause", None).await;
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/limits",
            Some(r#"{"max_running":5,"jobs_per_minute":null}"#),
        )
        .await;
    assert_eq!(r.body["paused"], true, "{r:?}");
    let r = t.admin("GET", "/v1/queue/controls", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{r:?}");
    assert_eq!(
        (&r.body[0]["project"], &r.body[0]["paused"]),
        (&json!("shop"), &json!(true))
    );

    // Every change is audited under the caller.
    let r = t.admin("GET", "/v1/audit?project=shop", None).await;
    let actions: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["queue.pause", "queue.resume", "project.limits"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    // A developer may not pause; an unknown project is a 404.
    let developer = t.user("user:dev", "Developer", "shop").await;
    let r = t.call(&developer, "POST", "/v1/projects/shop/queue/resume", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let r = t.admin("POST", "/v1/projects/nope/queue/pause", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
}

async fn dead_jobs_throughput_and_workers(db: Db) {
    let t = api(db).await;
    let r = t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let ids = enqueue_pings(&t, "shop", 3).await;
    let queue = t.store.queue();
    let claimed = queue.claim(&claim_request()).await.unwrap();
    assert_eq!(claimed.len(), 3);
    t.store
        .worker_heartbeat(&WorkerBeat {
            id: "w-test",
            host: "test-host",
            pid: 42,
            kinds: &["ping".to_string()],
            concurrency: 8,
            unavailable: &Default::default(),
        })
        .await
        .unwrap();
    let r = t.admin("GET", "/v1/queue/workers", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let w = &r.body[0];
    assert_eq!(
        (&w["id"], &w["status"], &w["running"], &w["kinds"]),
        (&json!("w-test"), &json!("alive"), &json!(3), &json!(["ping"])),
        "{r:?}"
    );

    let acks = claimed
        .iter()
        .map(|j| {
            let outcome = if j.id == ids[0] {
                Outcome::Dead { error: "boom".into() }
            } else {
                Outcome::Completed
            };
            Ack::new(j, outcome)
        })
        .collect();
    queue.acknowledge(acks).await.unwrap();
    let r = t.admin("GET", "/v1/queue/jobs?state=dead", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{r:?}");
    assert_eq!(
        (&r.body[0]["id"], &r.body[0]["last_error"]),
        (&json!(ids[0]), &json!("boom"))
    );
    let r = t.admin("GET", "/v1/queue/throughput?minutes=5", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let buckets = r.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 5);
    let completed: u64 = buckets.iter().map(|b| b["completed"].as_u64().unwrap()).sum();
    let dead: u64 = buckets.iter().map(|b| b["dead"].as_u64().unwrap()).sum();
    assert_eq!((completed, dead), (2, 1), "{r:?}");
    assert!(r.body["run_p95_seconds"].is_number(), "{r:?}");

    let r = t.admin("POST", &format!("/v1/jobs/{}/retry", ids[0]), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = t.admin("GET", "/v1/queue/jobs?state=dead", None).await;
    assert_eq!(r.body, json!([]), "retried: no longer dead");
    let r = t
        .admin("GET", "/v1/queue/jobs?state=available&project=shop", None)
        .await;
    assert_eq!(r.body[0]["id"], ids[0], "{r:?}");

    // A stopped worker says so.
    t.store.worker_stopped("w-test").await.unwrap();
    let r = t.admin("GET", "/v1/queue/workers", None).await;
    assert_eq!(r.body[0]["status"], "stopped", "{r:?}");

    let r = t.admin("GET", "/v1/queue/jobs?state=zombie", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert!(r.body["hint"].as_str().unwrap().contains("dead"), "{r:?}");
}

/// Bad numbers in the query are 400 problems with a hint (never a panic or a plain-text reply);
/// out-of-range ones are clamped.
async fn bad_query_numbers_are_refused_with_a_hint(db: Db) {
    let t = api(db).await;
    for uri in [
        "/v1/queue/jobs?limit=-1",
        "/v1/queue/jobs?limit=ten",
        "/v1/queue/jobs?limit=99999999999999999999999",
        "/v1/queue/throughput?minutes=-5",
        "/v1/queue/throughput?minutes=99999999999",
    ] {
        let r = t.admin("GET", uri, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {r:?}");
        assert_eq!(r.body["code"], "invalid_query", "{uri}: {r:?}");
        assert!(
            r.body["hint"].as_str().is_some_and(|h| h.contains("limit=50")),
            "{uri}: {r:?}"
        );
    }
    for uri in [
        "/v1/queue/jobs?limit=0",
        "/v1/queue/jobs?limit=18446744073709551615",
        "/v1/queue/jobs?state=",
    ] {
        let r = t.admin("GET", uri, None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {r:?}");
    }
    let r = t.admin("GET", "/v1/queue/throughput?minutes=0", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["minutes"], 1, "at least one minute: {r:?}");
    let r = t.admin("GET", "/v1/queue/throughput?minutes=4000000000", None).await;
    assert_eq!((r.status, &r.body["minutes"]), (StatusCode::OK, &json!(180)), "{r:?}");
}

/// Reads `snapshot` events from an open SSE body until one satisfies `want`.
async fn next_snapshot(
    body: &mut axum::body::Body,
    buffer: &mut String,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use http_body_util::BodyExt;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.contains("event: snapshot")
                && let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
            {
                let value: serde_json::Value = serde_json::from_str(data).unwrap();
                if want(&value) {
                    return value;
                }
            }
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a snapshot within 10 s")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

async fn watchers_share_one_live_queue_view(db: Db) {
    use tower::ServiceExt;
    let t = api(db).await;
    let r = t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let open = || {
        let request = axum::http::Request::get("/v1/queue/stream")
            .header("authorization", format!("Bearer {}", t.admin))
            .body(axum::body::Body::empty())
            .unwrap();
        t.app.clone().oneshot(request)
    };
    let first = open().await.unwrap();
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let mut first = first.into_body();
    let mut buffer = String::new();
    let empty = next_snapshot(&mut first, &mut buffer, |_| true).await;
    assert_eq!(empty["stats"]["depth"], json!([]), "{empty}");

    // A second watcher joins the running view and gets the current snapshot at once.
    let mut second = open().await.unwrap().into_body();
    let mut second_buffer = String::new();
    let joined = next_snapshot(&mut second, &mut second_buffer, |_| true).await;
    assert_eq!(joined["stats"], empty["stats"]);

    // A change reaches both.
    enqueue_pings(&t, "shop", 2).await;
    let has_pings = |v: &serde_json::Value| {
        v["stats"]["depth"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["kind"] == "ping" && r["count"] == 2))
    };
    let seen = next_snapshot(&mut first, &mut buffer, has_pings).await;
    assert_eq!(seen["active"].as_array().unwrap().len(), 2, "{seen}");
    next_snapshot(&mut second, &mut second_buffer, has_pings).await;

    // After every watcher left, a new one starts a fresh view.
    drop((first, second));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut third = open().await.unwrap().into_body();
    let mut third_buffer = String::new();
    next_snapshot(&mut third, &mut third_buffer, has_pings).await;
}

on_both_databases!(
    pausing_a_project_stops_its_claims_until_resumed,
    dead_jobs_throughput_and_workers,
    watchers_share_one_live_queue_view,
    bad_query_numbers_are_refused_with_a_hint
);
