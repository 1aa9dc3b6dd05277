//! Test harness for the API: each test gets its own database (a fresh PostgreSQL database or
//! SQLite file), a router over it, and a bootstrap Owner token.

#![allow(dead_code)]

#[path = "../../../queue/tests/common/mod.rs"]
mod common;
#[path = "../../../store/tests/support/mod.rs"]
mod store_support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use enclii_api::auth::RateLimit;
use enclii_store::{Store, TokenRecord};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub use common::TestDatabase;

pub const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";

pub use store_support::Db;

pub struct TestApi {
    pub app: axum::Router,
    pub store: Arc<Store>,
    /// The bootstrap Owner's token.
    pub admin: String,
    _db: Option<TestDatabase>,
}

pub struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

pub async fn api(db: Db) -> TestApi {
    api_with(
        db,
        RateLimit {
            per_minute: 100_000,
            burst: 100_000,
        },
    )
    .await
}

pub async fn api_with(db: Db, rate_limit: RateLimit) -> TestApi {
    api_configured(
        db,
        enclii_api::ApiConfig {
            rate_limit,
            ..Default::default()
        },
    )
    .await
}

/// An API with `config` (its webhook secret is always [`WEBHOOK_SECRET`]).
pub async fn api_configured(db: Db, mut config: enclii_api::ApiConfig) -> TestApi {
    let (store, guard) = store_support::open_store(db).await;
    let store = Arc::new(store);
    let admin = enclii_auth::token::generate();
    let record = token_record(&admin, "user:admin", &all_scopes(), None, None);
    assert!(store.bootstrap("user:admin", "Owner", &record).await.unwrap());
    config.webhook_secret = Some(WEBHOOK_SECRET.into());
    let state = enclii_api::AppState::new(store.clone(), enclii_api::metrics::install(), config);
    TestApi {
        app: enclii_api::router(state),
        store,
        admin: admin.plaintext,
        _db: guard,
    }
}

pub fn all_scopes() -> Vec<String> {
    enclii_api::auth::Permission::ALL
        .iter()
        .map(|p| p.scope().to_string())
        .collect()
}

pub fn token_record(
    token: &enclii_auth::token::NewToken,
    subject: &str,
    scopes: &[String],
    project: Option<&str>,
    expires_at: Option<i64>,
) -> TokenRecord {
    TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash.clone(),
        subject: subject.into(),
        name: "test".into(),
        scopes: serde_json::to_string(scopes).unwrap(),
        project: project.map(String::from),
        created_at: chrono::Utc::now().timestamp_millis(),
        expires_at,
        revoked_at: None,
    }
}

impl TestApi {
    /// A token for `subject`, who holds `role` on `project`.
    pub async fn user(&self, subject: &str, role: &str, project: &str) -> String {
        self.store
            .bind_role("user:admin", subject, project, role)
            .await
            .unwrap();
        let token = enclii_auth::token::generate();
        self.store
            .insert_token("user:admin", &token_record(&token, subject, &all_scopes(), None, None))
            .await
            .unwrap();
        token.plaintext
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let res = self.app.clone().oneshot(request).await.unwrap();
        let status = res.status();
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        if content_type.starts_with("text/event-stream") {
            // A live stream may never end; callers that want its events read them themselves.
            return Response {
                status,
                content_type,
                retry_after,
                body: Value::Null,
            };
        }
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Response {
            status,
            content_type,
            retry_after,
            body,
        }
    }

    /// A JSON (or empty) request with a bearer token.
    pub async fn call(&self, token: &str, method: &str, uri: &str, body: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        self.send(req.body(Body::from(body.unwrap_or_default().to_string())).unwrap())
            .await
    }

    pub async fn admin(&self, method: &str, uri: &str, body: Option<&str>) -> Response {
        self.call(&self.admin.clone(), method, uri, body).await
    }

    /// Sends a Service Spec as YAML.
    pub async fn apply_yaml(&self, token: &str, project: &str, yaml: &str) -> Response {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/v1/projects/{project}/services"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/yaml")
            .body(Body::from(yaml.to_string()))
            .unwrap();
        self.send(req).await
    }

    /// A signed GitHub delivery.
    pub async fn webhook(&self, event: &str, delivery: &str, body: &str) -> Response {
        let signature = enclii_auth::github_signature::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        self.webhook_signed(event, delivery, body, Some(&format!("sha256={signature}")))
            .await
    }

    pub async fn webhook_signed(&self, event: &str, delivery: &str, body: &str, signature: Option<&str>) -> Response {
        let mut req = Request::builder()
            .method("POST")
            .uri("/v1/webhooks/github")
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery);
        if let Some(signature) = signature {
            req = req.header("x-hub-signature-256", signature);
        }
        self.send(req.body(Body::from(body.to_string())).unwrap()).await
    }

    /// Records `release` as built, pushed and signed by its pipeline: ready to deploy.
    pub async fn finish_signed(&self, release: i64) {
        let signed = enclii_store::ReleaseOutcome {
            digest: Some(format!("sha256:{}", "0".repeat(64))),
            signature: Some(format!("registry.example/shop/api:sha256-{}.sig", "0".repeat(64))),
            ..Default::default()
        };
        self.store.finish_release(release, &signed).await.unwrap();
    }

    /// Creates a project and a service `api` building from `repo` (`org/name` on GitHub).
    pub async fn project_with_service(&self, project: &str, repo: &str) {
        let r = self
            .admin("POST", "/v1/projects", Some(&format!(r#"{{"slug":"{project}"}}"#)))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        let r = self
            .apply_yaml(&self.admin.clone(), project, &service_yaml(project, "api", repo))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
}

pub fn service_yaml(project: &str, name: &str, repo: &str) -> String {
    format!(
        "apiVersion: enclii.dev/v1
kind: Service
metadata: {{ project: {project}, environment: prod, name: {name} }}
spec:
  source: {{ git: {{ repository: https://github.com/{repo}, branch: main }} }}
  runtime: {{ image: \"registry.example/{project}/{name}:{{{{ git.sha }}}}\", ports: [3000], replicas: {{ min: 1, max: 3 }} }}
  deploy: {{ strategy: canary, steps: [10, 100] }}
"
    )
}

pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

pub fn push_payload(repo: &str, branch: &str, after: &str) -> String {
    format!(
        r#"{{"ref":"refs/heads/{branch}","after":"{after}","before":"{}","created":false,"deleted":false,
            "repository":{{"full_name":"{repo}","clone_url":"https://github.com/{repo}.git","html_url":"https://github.com/{repo}"}},
            "head_commit":{{"id":"{after}","message":"change"}}}}"#,
        sha(0)
    )
}

pub fn pull_request_payload(repo: &str, action: &str, number: u64, branch: &str, head: &str) -> String {
    format!(
        r#"{{"action":"{action}","number":{number},
            "repository":{{"full_name":"{repo}","clone_url":"https://github.com/{repo}.git","html_url":"https://github.com/{repo}"}},
            "pull_request":{{"number":{number},"merged":false,
              "head":{{"sha":"{head}","ref":"{branch}","repo":{{"clone_url":"https://github.com/{repo}.git"}}}},
              "base":{{"sha":"{}","ref":"main"}}}}}}"#,
        sha(0)
    )
}

/// Runs an async test body once per control-plane database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::support::Db::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::support::Db::Sqlite).await })*
        }
    };
}
