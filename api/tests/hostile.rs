//! The API as an attacker or a careless client meets it (issue 14): narrow tokens cannot manage
//! their holder's other tokens, every error is problem+json, failed authentications are
//! throttled per client address, and live job logs share one poller per job under a per-token cap.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use support::{Db, TestApi, api};
use tower::ServiceExt;

fn token_id(token: &str) -> String {
    enclii_auth::token::parse(token)
        .expect("a personal access token")
        .0
        .to_string()
}

/// A new token of the caller's (its plaintext).
async fn mint(t: &TestApi, token: &str, body: &str) -> String {
    let r = t.call(token, "POST", "/v1/tokens", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn only_tokens_with_the_tokens_scope_and_no_project_manage_tokens() {
    let t = api(Db::Sqlite).await;
    t.project_with_service("shop", "org/shop").await;
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"blog"}"#)).await;
    let dev = t.user("user:dev", "Developer", "shop").await;
    t.store
        .bind_role("user:admin", "user:dev", "blog", "Developer")
        .await
        .unwrap();
    let read = mint(&t, &dev, r#"{"name":"ci","scopes":["read"]}"#).await;
    let blog_only = mint(
        &t,
        &dev,
        r#"{"name":"blog","scopes":["read","deploy"],"project":"blog"}"#,
    )
    .await;
    let dev_id = token_id(&dev);

    // The issue's attack: a read token, or one restricted to another project, revokes the
    // holder's all-scope token. Neither may, nor list or mint tokens.
    for narrow in [&read, &blog_only] {
        for (method, uri, body) in [
            ("DELETE", format!("/v1/tokens/{dev_id}"), None),
            ("GET", "/v1/tokens".to_string(), None),
            (
                "POST",
                "/v1/tokens".to_string(),
                Some(r#"{"name":"more","scopes":["read"]}"#),
            ),
        ] {
            let r = t.call(narrow, method, &uri, body).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {uri}: {r:?}");
            assert_eq!(r.content_type, "application/problem+json");
            assert!(r.body["hint"].as_str().is_some_and(|h| h.contains("tokens")), "{r:?}");
        }
    }
    assert_eq!(t.call(&dev, "GET", "/v1/whoami", None).await.status, StatusCode::OK);
    assert_eq!(
        t.call(&read, "GET", "/v1/whoami", None).await.status,
        StatusCode::OK,
        "whoami is identity, not token management"
    );

    // `tokens` is never given to a project-restricted token.
    let r = t
        .call(
            &dev,
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"x","scopes":["read","tokens"],"project":"shop"}"#),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("scopes[1]")),
        "{r:?}"
    );

    // A token with `tokens` manages them; an all-scope token stored before the scope existed
    // (every other scope, not `tokens`) still does.
    let manager = mint(&t, &dev, r#"{"name":"tokens","scopes":["tokens"]}"#).await;
    let listed = t.call(&manager, "GET", "/v1/tokens", None).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let legacy = enclii_auth::token::generate();
    let legacy_scopes: Vec<String> = enclii_api::auth::Permission::ALL
        .iter()
        .map(|p| p.scope().to_string())
        .filter(|s| s != "tokens")
        .collect();
    let record = support::token_record(&legacy, "user:dev", &legacy_scopes, None, None);
    t.store.insert_token("test", &record).await.unwrap();
    let me = t.call(&legacy.plaintext, "GET", "/v1/whoami", None).await;
    assert!(
        me.body["scopes"].as_array().unwrap().contains(&json!("tokens")),
        "{me:?}"
    );
    let r = t
        .call(
            &legacy.plaintext,
            "DELETE",
            &format!("/v1/tokens/{}", token_id(&read)),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = t.call(&manager, "DELETE", &format!("/v1/tokens/{dev_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(
        t.call(&dev, "GET", "/v1/whoami", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn every_error_is_problem_json_with_what_where_and_a_hint() {
    let t = api(Db::Sqlite).await;
    t.project_with_service("shop", "org/shop").await;
    // (method, uri, body, status, code, what the detail mentions)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        StatusCode,
        &'static str,
        &'static str,
    );
    let cases: [Case; 9] = [
        // axum's own `Path` (jobs) and `Query` (releases): rewritten by the problem layer.
        (
            "GET",
            "/v1/jobs/abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "/v1/jobs/abc",
        ),
        (
            "GET",
            "/v1/projects/shop/releases?limit=lots",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        // The API's own extractors: the parameter, its value and the type it needs.
        (
            "GET",
            "/v1/jobs/abc/logs",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "whole number",
        ),
        (
            "GET",
            "/v1/jobs/1/logs?after=x",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "after",
        ),
        (
            "DELETE",
            "/v1/tokens/%FF",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "UTF-8",
        ),
        (
            "GET",
            "/v1/no/such/route",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "route",
        ),
        (
            "DELETE",
            "/v1/whoami",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method",
        ),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"kind":"#),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "EOF",
        ),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"kind":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "kind",
        ),
    ];
    for (method, uri, body, status, code, mentions) in cases {
        let r = t.admin(method, uri, body).await;
        assert_eq!(
            (r.status, r.content_type.as_str(), r.body["code"].as_str()),
            (status, "application/problem+json", Some(code)),
            "{method} {uri}: {r:?}"
        );
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(mentions), "{method} {uri}: {detail}");
        assert!(
            r.body["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{method} {uri}: a problem says how to fix it: {r:?}"
        );
        assert_eq!(r.body["status"], status.as_u16(), "{method} {uri}");
    }
    // A body that is not JSON at all.
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("authorization", format!("Bearer {}", t.admin))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from("kind=ping"))
        .unwrap();
    let r = t.send(request).await;
    assert_eq!(
        (r.content_type.as_str(), r.body["code"].as_str()),
        ("application/problem+json", Some("unsupported_media_type")),
        "{r:?}"
    );
}

/// `GET /v1/whoami` from `address` with `token`.
async fn whoami_from(t: &TestApi, address: &str, token: &str) -> support::Response {
    let peer = SocketAddr::new(address.parse().unwrap(), 40_000);
    let request = Request::builder()
        .uri("/v1/whoami")
        .header("authorization", format!("Bearer {token}"))
        .extension(ConnectInfo(peer))
        .body(Body::empty())
        .unwrap();
    t.send(request).await
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client_address() {
    let t = api(Db::Sqlite).await;
    let (attacker, neighbour) = ("198.51.100.7", "203.0.113.9");
    let bad = format!("{}_{}", "enclii_pat_aaaaaaaaaaaa", "b".repeat(43));
    // A valid token is never counted, however often it is used.
    for _ in 0..40 {
        assert_eq!(whoami_from(&t, attacker, &t.admin).await.status, StatusCode::OK);
    }
    // Bad tokens are answered 401 until the address's 30 failures are spent, then 429 without
    // their token being looked up.
    let mut refused = None;
    for attempt in 0..40 {
        let r = whoami_from(&t, attacker, &bad).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((attempt, r));
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    }
    let (failures, r) = refused.expect("bad tokens are throttled");
    assert!((30..=35).contains(&failures), "refused after {failures} failures");
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["code"], "rate_limited");
    assert!(r.body["hint"].as_str().unwrap().contains("check the token"), "{r:?}");
    let wait: u64 = r.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&wait), "one failure is forgiven every 2 s: {wait}");
    // While the address is refused, so is a good token from it (telling them apart would cost
    // the lookup); other addresses are not affected.
    assert_eq!(
        whoami_from(&t, attacker, &t.admin).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(whoami_from(&t, neighbour, &t.admin).await.status, StatusCode::OK);
    assert_eq!(whoami_from(&t, neighbour, &bad).await.status, StatusCode::UNAUTHORIZED);
    // After the wait the good token works again — and bad ones stay throttled, one per refill.
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 100)).await;
    assert_eq!(whoami_from(&t, attacker, &t.admin).await.status, StatusCode::OK);
    assert_eq!(whoami_from(&t, attacker, &bad).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami_from(&t, attacker, &bad).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A live event stream's text, read as it comes.
struct Events(Body, String);

impl Events {
    async fn open(t: &TestApi, token: &str, uri: &str) -> Result<Events, support::Response> {
        let request = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = t.app.clone().oneshot(request).await.unwrap();
        if response.status() != StatusCode::OK {
            let status = response.status();
            let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
            let (content_type, retry_after) = (header("content-type").unwrap_or_default(), header("retry-after"));
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            return Err(support::Response {
                status,
                content_type,
                retry_after,
                body: serde_json::from_slice(&bytes).unwrap_or_default(),
            });
        }
        Ok(Events(response.into_body(), String::new()))
    }

    /// Reads until the text holds `needle`; returns everything read so far.
    async fn until(&mut self, needle: &str) -> String {
        let read = async {
            while !self.1.contains(needle) {
                let frame = self.0.frame().await.expect("the stream is open").unwrap();
                if let Ok(data) = frame.into_data() {
                    self.1.push_str(&String::from_utf8_lossy(&data));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` in: {}", self.1));
        self.1.clone()
    }
}

/// The `line` events' texts in a stream's text, in order.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["line"].as_str().map(String::from))
        .collect()
}

/// The current value of a gauge without labels on `/metrics`.
async fn gauge(t: &TestApi, name: &str) -> f64 {
    let r = t.call("", "GET", "/metrics", None).await;
    let text = r.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn append(t: &TestApi, job: i64, seq: i64, line: &str) {
    let line = enclii_store::LogLine {
        job_id: job,
        seq,
        at: chrono::Utc::now().timestamp_millis(),
        line: line.into(),
    };
    t.store.append_log(&[line]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_logs_of_one_job_share_one_poller_and_a_token_holds_at_most_its_cap() {
    let t = api(Db::Sqlite).await;
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    let job = t
        .admin("POST", "/v1/jobs", Some(r#"{"kind":"ping","project":"shop"}"#))
        .await;
    let job = job.body["id"].as_i64().unwrap();
    append(&t, job, 1, "cloning").await;
    let uri = format!("/v1/jobs/{job}/logs/stream");
    let cap = enclii_api::ClientLimits::default().log_streams_per_token;

    let mut streams = Vec::new();
    for _ in 0..cap {
        streams.push(Events::open(&t, &t.admin, &uri).await.expect("a stream within the cap"));
    }
    for stream in &mut streams {
        stream.until("cloning").await;
    }
    assert_eq!(
        gauge(&t, "enclii_log_pollers").await,
        1.0,
        "one poller for {cap} streams"
    );
    assert_eq!(gauge(&t, "enclii_log_streams").await, cap as f64);
    append(&t, job, 2, "building").await;
    append(&t, job, 3, "pushing").await;
    for stream in &mut streams {
        let text = stream.until("pushing").await;
        assert_eq!(lines(&text), ["cloning", "building", "pushing"], "{text}");
    }

    // One stream more for this token is refused; another token is not counted against it.
    let refused = Events::open(&t, &t.admin, &uri).await.err().expect("over the cap");
    assert_eq!(
        (
            refused.status,
            refused.content_type.as_str(),
            refused.body["code"].as_str()
        ),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "application/problem+json",
            Some("rate_limited")
        )
    );
    assert!(refused.retry_after.is_some());
    let reader = t.user("user:reader", "ReadOnly", "shop").await;
    let mut late = Events::open(&t, &reader, &uri).await.expect("another token's stream");
    let text = late.until("pushing").await;
    assert_eq!(
        lines(&text),
        ["cloning", "building", "pushing"],
        "a late stream catches up"
    );
    assert_eq!(
        gauge(&t, "enclii_log_pollers").await,
        1.0,
        "the late stream joined the poller"
    );
    // A closed stream gives its slot back.
    drop(streams.pop());
    let mut again = Events::open(&t, &t.admin, &uri).await.expect("a slot was freed");
    again.until("pushing").await;
    streams.push(again);

    // The job ends: every stream gets `end`, and the poller stops.
    let r = t.admin("POST", &format!("/v1/jobs/{job}/cancel"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    for stream in streams.iter_mut().chain([&mut late]) {
        stream.until("event: end").await;
    }
    drop(streams);
    drop(late);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&t, "enclii_log_pollers").await != 0.0 || gauge(&t, "enclii_log_streams").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poller and the streams are gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
