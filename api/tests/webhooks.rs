//! GitHub webhooks end to end through the router, on PostgreSQL and on SQLite: signatures,
//! redelivery, supersede, previews and their teardown, bad payloads.

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Db, TestApi, api, pull_request_payload, push_payload, sha};

async fn pipeline(t: &TestApi, id: &Value) -> Value {
    t.admin("GET", &format!("/v1/pipelines/{}", id.as_i64().unwrap()), None)
        .await
        .body
}

async fn deliveries(t: &TestApi) -> usize {
    t.store.list_deliveries(None, 500).await.unwrap().len()
}

async fn signatures_are_verified(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let body = push_payload("org/shop", "main", &sha(1));
    let r = t.webhook_signed("push", "d-1", &body, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("signature_missing"))
    );
    let r = t
        .webhook_signed("push", "d-1", &body, Some(&format!("sha256={}", "0".repeat(64))))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("signature_invalid"))
    );
    let r = t.webhook_signed("push", "d-1", &body, Some("sha1=abc")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A body changed after signing fails too.
    let signature = enclii_auth::github_signature::hmac_sha256_hex(support::WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let tampered = body.replace(&sha(1), &sha(2));
    let r = t
        .webhook_signed("push", "d-1", &tampered, Some(&format!("sha256={signature}")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(deliveries(&t).await, 0, "nothing persisted");
    let r = t
        .webhook("ping", "d-ping", r#"{"zen":"Keep it logically awesome.","hook_id":1}"#)
        .await;
    assert_eq!(
        (r.status, r.body["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("pong"))
    );
}

async fn a_push_enqueues_one_pipeline_and_redelivery_changes_nothing(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let body = push_payload("org/shop", "main", &sha(1));
    let first = t.webhook("push", "delivery-1", &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(first.body["pipelines"].as_array().unwrap().len(), 1);
    let run = pipeline(&t, &first.body["pipelines"][0]).await;
    assert_eq!(run["steps"][0]["kind"], "clone");
    let clone = t
        .admin("GET", &format!("/v1/jobs/{}", run["steps"][0]["job"]), None)
        .await;
    assert_eq!(clone.body["payload"]["repository"], "https://github.com/org/shop");
    assert_eq!(clone.body["payload"]["commit"], sha(1));
    let release = t
        .admin("GET", &format!("/v1/releases/{}", first.body["releases"][0]), None)
        .await;
    assert_eq!(
        (release.body["status"].as_str(), release.body["trigger"].as_str()),
        (Some("building"), Some("push"))
    );

    let again = t.webhook("push", "delivery-1", &body).await;
    assert_eq!((again.status, &again.body["duplicate"]), (StatusCode::OK, &json!(true)));
    assert_eq!(again.body["pipelines"], first.body["pipelines"]);
    // The same commit under a new delivery id (a manual redelivery of another hook, or a replay)
    // builds nothing: the branch already points at it.
    let other = t.webhook("push", "delivery-2", &body).await;
    assert_eq!(other.body["pipelines"], json!([]));
    assert!(
        other.body["outcome"].as_str().unwrap().contains("already points at"),
        "{other:?}"
    );
    let releases = t.admin("GET", "/v1/projects/shop/services/api/releases", None).await;
    assert_eq!(releases.body.as_array().unwrap().len(), 1);
    assert_eq!(deliveries(&t).await, 2);

    // Pushes that deploy nothing are persisted and answered, with the reason.
    let r = t
        .webhook("push", "delivery-3", &push_payload("org/shop", "feature", &sha(3)))
        .await;
    assert_eq!(
        r.body["outcome"],
        "ignored: no service deploys this repository and branch"
    );
    let r = t
        .webhook("push", "delivery-4", &push_payload("org/unknown", "main", &sha(4)))
        .await;
    assert_eq!((r.status, &r.body["pipelines"]), (StatusCode::ACCEPTED, &json!([])));
    let tag = push_payload("org/shop", "main", &sha(5)).replace("refs/heads/main", "refs/tags/v1");
    let r = t.webhook("push", "delivery-5", &tag).await;
    assert!(r.body["outcome"].as_str().unwrap().contains("is not a branch"));
    let r = t.webhook("issues", "delivery-6", r#"{"action":"opened"}"#).await;
    assert!(r.body["outcome"].as_str().unwrap().contains("does not act on `issues`"));
    let audit = t.admin("GET", "/v1/audit?action=webhook.receive", None).await;
    assert_eq!(audit.body.as_array().unwrap().len(), 6, "one per fresh delivery");
}

async fn a_newer_push_supersedes_the_running_pipeline(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let first = t
        .webhook("push", "p-1", &push_payload("org/shop", "main", &sha(1)))
        .await;
    let second = t
        .webhook("push", "p-2", &push_payload("org/shop", "main", &sha(2)))
        .await;
    assert_ne!(first.body["pipelines"], second.body["pipelines"]);
    let old = pipeline(&t, &first.body["pipelines"][0]).await;
    assert_eq!(old["state"], "superseded");
    assert!(
        old["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "cancelled"),
        "{old}"
    );
    assert_eq!(pipeline(&t, &second.body["pipelines"][0]).await["state"], "running");
    let old_release = t
        .admin("GET", &format!("/v1/releases/{}", first.body["releases"][0]), None)
        .await;
    assert_eq!(old_release.body["status"], "superseded");
}

async fn pull_requests_get_previews_and_teardowns(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let opened = t
        .webhook(
            "pull_request",
            "pr-1",
            &pull_request_payload("org/shop", "opened", 7, "feature", &sha(10)),
        )
        .await;
    assert_eq!(opened.status, StatusCode::ACCEPTED, "{opened:?}");
    let envs = t.admin("GET", "/v1/projects/shop/environments", None).await;
    assert!(envs.body.as_array().unwrap().iter().any(|e| e["name"] == "preview-7"));
    let build = pipeline(&t, &opened.body["pipelines"][0]).await;
    let deploy = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "deploy")
        .unwrap()
        .clone();
    let deploy = t.admin("GET", &format!("/v1/jobs/{}", deploy["job"]), None).await;
    assert_eq!(deploy.body["payload"]["environment"], "preview-7");

    // New commits on the pull request supersede its preview build, not prod's.
    let prod = t
        .webhook("push", "main-1", &push_payload("org/shop", "main", &sha(20)))
        .await;
    let sync = t
        .webhook(
            "pull_request",
            "pr-2",
            &pull_request_payload("org/shop", "synchronize", 7, "feature", &sha(11)),
        )
        .await;
    assert_eq!(pipeline(&t, &opened.body["pipelines"][0]).await["state"], "superseded");
    assert_eq!(pipeline(&t, &prod.body["pipelines"][0]).await["state"], "running");

    // Closing tears the preview down, keyed on repository and number, and stops its build.
    let closed = t
        .webhook(
            "pull_request",
            "pr-3",
            &pull_request_payload("org/shop", "closed", 7, "feature", &sha(11)),
        )
        .await;
    assert_eq!(closed.status, StatusCode::ACCEPTED, "{closed:?}");
    let teardown = pipeline(&t, &closed.body["pipelines"][0]).await;
    assert_eq!(teardown["name"], "preview-teardown");
    let job = t
        .admin("GET", &format!("/v1/jobs/{}", teardown["steps"][0]["job"]), None)
        .await;
    // Made while handling the delivery, so it carries the delivery's trace (`_trace`).
    let mut payload = job.body["payload"].clone();
    let trace = payload.as_object_mut().unwrap().remove("_trace");
    assert!(
        trace
            .as_ref()
            .and_then(|t| t.as_str()?.parse::<enclii_queue::TraceContext>().ok())
            .is_some(),
        "{trace:?}"
    );
    assert_eq!(
        payload,
        json!({"service": "api", "repository": "github.com/org/shop", "pull_request": 7, "environment": "preview-7"})
    );
    assert_eq!(pipeline(&t, &sync.body["pipelines"][0]).await["state"], "superseded");
    assert_eq!(pipeline(&t, &prod.body["pipelines"][0]).await["state"], "running");
    // A pull request without a preview has nothing to tear down.
    let none = t
        .webhook(
            "pull_request",
            "pr-4",
            &pull_request_payload("org/shop", "closed", 8, "other", &sha(12)),
        )
        .await;
    assert_eq!(none.body["outcome"], "ignored: no preview exists for this pull request");
}

async fn bad_payloads_are_refused_and_change_nothing(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let cases = [
        ("push", "{not json"),
        ("push", r#"{"ref":"refs/heads/main"}"#),
        ("push", &push_payload("org/shop", "main", "not-a-sha")),
        ("pull_request", r#"{"action":"opened","number":0}"#),
    ];
    for (i, (event, body)) in cases.iter().enumerate() {
        let r = t.webhook(event, &format!("bad-{i}"), body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_payload")),
            "{body}"
        );
        assert_eq!(r.content_type, "application/problem+json");
    }
    let r = t
        .send(
            axum::http::Request::post("/v1/webhooks/github")
                .header("x-hub-signature-256", "sha256=00")
                .body(axum::body::Body::from("x".repeat(2 << 20)))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "application/problem+json")
    );
    let r = t
        .send(
            axum::http::Request::get("/v1/webhooks/github")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    assert_eq!(deliveries(&t).await, 0);
    assert!(
        t.store.queue().stats().await.unwrap().depth.is_empty(),
        "nothing enqueued"
    );
}

/// A push of `after` on main continuing from `before`, its head commit made at `time`.
fn push_at(before: &str, after: &str, time: &str) -> String {
    let mut body: Value = serde_json::from_str(&push_payload("org/shop", "main", after)).unwrap();
    body["before"] = before.into();
    body["head_commit"]["timestamp"] = time.into();
    body.to_string()
}

/// A pull request event whose `updated_at` is `time`.
fn pull_request_at(action: &str, head: &str, time: &str) -> String {
    let mut body: Value = serde_json::from_str(&pull_request_payload("org/shop", action, 7, "feature", head)).unwrap();
    body["pull_request"]["updated_at"] = time.into();
    body.to_string()
}

async fn release_status(t: &TestApi, outcome: &support::Response) -> Value {
    t.admin("GET", &format!("/v1/releases/{}", outcome.body["releases"][0]), None)
        .await
        .body["status"]
        .clone()
}

async fn replayed_deliveries_never_move_a_branch_backwards(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let first = t
        .webhook("push", "p-1", &push_at(&sha(0), &sha(1), "2026-12-01T10:00:00Z"))
        .await;
    let second = t
        .webhook("push", "p-2", &push_at(&sha(1), &sha(2), "2026-12-01T11:05:00+01:00"))
        .await;
    assert_eq!(release_status(&t, &first).await, "superseded");

    // The captured first push, re-sent under a fresh delivery id: its signed body says it is
    // older than the branch's head. Nothing is built and the newer release stands.
    let replay = t
        .webhook("push", "replay-1", &push_at(&sha(0), &sha(1), "2026-12-01T10:00:00Z"))
        .await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{replay:?}");
    assert_eq!(replay.body["pipelines"], json!([]));
    let outcome = replay.body["outcome"].as_str().unwrap();
    assert!(outcome.contains("stale") && outcome.contains(&sha(2)), "{outcome}");
    assert_eq!(release_status(&t, &second).await, "building");
    let releases = t.admin("GET", "/v1/projects/shop/services/api/releases", None).await;
    assert_eq!(releases.body.as_array().unwrap().len(), 2);

    // A force-push back to the old commit continues from the head: a deliberate rollback builds.
    let rollback = t
        .webhook("push", "p-3", &push_at(&sha(2), &sha(1), "2026-12-01T10:00:00Z"))
        .await;
    assert_eq!(rollback.body["pipelines"].as_array().unwrap().len(), 1, "{rollback:?}");
    assert_eq!(release_status(&t, &second).await, "superseded");

    // Pull requests: a replay for the head SHA the preview already has does not rebuild; a replay
    // of an older event neither rebuilds nor tears down; a reopen after the close does rebuild.
    let opened = t
        .webhook(
            "pull_request",
            "pr-1",
            &pull_request_at("opened", &sha(10), "2026-12-01T11:00:00Z"),
        )
        .await;
    assert_eq!(opened.body["pipelines"].as_array().unwrap().len(), 1);
    let again = t
        .webhook(
            "pull_request",
            "pr-1b",
            &pull_request_at("opened", &sha(10), "2026-12-01T11:00:00Z"),
        )
        .await;
    assert_eq!(again.body["pipelines"], json!([]), "{again:?}");
    let sync = t
        .webhook(
            "pull_request",
            "pr-2",
            &pull_request_at("synchronize", &sha(11), "2026-12-01T11:10:00Z"),
        )
        .await;
    assert_eq!(sync.body["pipelines"].as_array().unwrap().len(), 1);
    let old = t
        .webhook(
            "pull_request",
            "pr-1c",
            &pull_request_at("opened", &sha(10), "2026-12-01T11:00:00Z"),
        )
        .await;
    assert_eq!(old.body["pipelines"], json!([]), "{old:?}");
    assert_eq!(pipeline(&t, &sync.body["pipelines"][0]).await["state"], "running");
    let closed = t
        .webhook(
            "pull_request",
            "pr-3",
            &pull_request_at("closed", &sha(11), "2026-12-01T12:00:00Z"),
        )
        .await;
    assert_eq!(closed.body["pipelines"].as_array().unwrap().len(), 1);
    let late = t
        .webhook(
            "pull_request",
            "pr-2b",
            &pull_request_at("synchronize", &sha(11), "2026-12-01T11:10:00Z"),
        )
        .await;
    assert_eq!(
        late.body["pipelines"],
        json!([]),
        "a replayed push to a closed pull request: {late:?}"
    );
    let reopened = t
        .webhook(
            "pull_request",
            "pr-4",
            &pull_request_at("reopened", &sha(11), "2026-12-02T09:00:00Z"),
        )
        .await;
    assert_eq!(reopened.body["pipelines"].as_array().unwrap().len(), 1, "{reopened:?}");
    let old_close = t
        .webhook(
            "pull_request",
            "pr-3b",
            &pull_request_at("closed", &sha(11), "2026-12-01T12:00:00Z"),
        )
        .await;
    assert_eq!(
        old_close.body["pipelines"],
        json!([]),
        "a replayed close tears nothing down: {old_close:?}"
    );
}

/// The delivery row is written last, with its outcome, and its primary key decides: copies of
/// one delivery arriving together act once, and every copy answers with that one outcome.
async fn concurrent_copies_of_a_delivery_act_once(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let body = push_payload("org/shop", "main", &sha(1));
    let answers = futures::future::join_all((0..8).map(|_| t.webhook("push", "same-delivery", &body))).await;
    let accepted: Vec<_> = answers.iter().filter(|r| r.status == StatusCode::ACCEPTED).collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    let first = &accepted[0].body;
    assert_eq!(first["pipelines"].as_array().unwrap().len(), 1, "{first}");
    for r in answers.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        assert_eq!(
            (r.status, &r.body["duplicate"]),
            (StatusCode::OK, &json!(true)),
            "{r:?}"
        );
        assert_eq!(r.body["pipelines"], first["pipelines"], "the first outcome: {r:?}");
    }
    assert_eq!(deliveries(&t).await, 1);
    let releases = t.admin("GET", "/v1/projects/shop/services/api/releases", None).await;
    assert_eq!(releases.body.as_array().unwrap().len(), 1);
    let audit = t.admin("GET", "/v1/audit?action=webhook.receive", None).await;
    assert_eq!(audit.body.as_array().unwrap().len(), 1);
}

on_both_databases!(
    concurrent_copies_of_a_delivery_act_once,
    replayed_deliveries_never_move_a_branch_backwards,
    signatures_are_verified,
    a_push_enqueues_one_pipeline_and_redelivery_changes_nothing,
    a_newer_push_supersedes_the_running_pipeline,
    pull_requests_get_previews_and_teardowns,
    bad_payloads_are_refused_and_change_nothing,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_rate_limited_per_project() {
    let config = enclii_api::ApiConfig {
        webhook_rate_limit: enclii_api::auth::RateLimit {
            per_minute: 60,
            burst: 2,
        },
        ..Default::default()
    };
    let t = support::api_configured(Db::Sqlite, config).await;
    t.project_with_service("shop", "org/shop").await;
    t.project_with_service("blog", "org/blog").await;
    for n in 0..2 {
        let r = t
            .webhook(
                "push",
                &format!("s-{n}"),
                &push_payload("org/shop", "main", &sha(n + 1)),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let r = t
        .webhook("push", "s-2", &push_payload("org/shop", "main", &sha(2)))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(r.body["detail"].as_str().unwrap().contains("project `shop`"));
    assert!(r.retry_after.is_some());
    assert!(
        t.store.delivery("s-2").await.is_err(),
        "a refused delivery is not recorded, so GitHub's redelivery works"
    );
    // Another project's deliveries are unaffected.
    let r = t
        .webhook("push", "b-0", &push_payload("org/blog", "main", &sha(9)))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}
