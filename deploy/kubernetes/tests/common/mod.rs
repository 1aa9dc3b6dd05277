//! Fixtures shared by the mock-backed tests: workloads, and a scripted stand-in for the API
//! server on kube's `tower-test` mock transport.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use enclii_deploy_contract::model::{AddonKey, AddonWorkload};
use enclii_deploy_contract::{Quota, RouteBinding, SecretEnv, SecretValue, ServiceKey, Workload};
use enclii_domain::addons::{AddonCredentials, AddonKind};
use enclii_domain::spec::{EXAMPLE, ServiceSpec, SpecFormat};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub const NS: &str = "enclii-solarpunk-saas-prod";

/// The product brief's example spec as release `release`, with a secret, a TLS route and a
/// quota it fits in.
pub fn example_workload(release: i64) -> Workload {
    let spec = ServiceSpec::parse(EXAMPLE, SpecFormat::Yaml)
        .expect("the example spec is valid")
        .spec;
    Workload {
        deployment: release,
        key: ServiceKey::new("solarpunk-saas", "prod", "api"),
        release,
        image: format!(
            "registry.example/solarpunk-saas/api@sha256:{}",
            format!("{release:02}").repeat(32)
        ),
        git_sha: "3f2c1d0e9b8a7f6e5d4c3b2a190817263544a5b6".into(),
        spec,
        secrets: vec![SecretEnv {
            name: "api-prod".into(),
            entries: vec![(
                "DATABASE_URL".into(),
                SecretValue::new("postgres://fixture-not-a-secret@db/api"),
            )],
        }],
        routes: vec![RouteBinding {
            host: "api.example.dev".into(),
            path: "/".into(),
            tls: true,
        }],
        quota: Quota {
            cpu_millis: Some(4000),
            memory_bytes: Some(4 << 30),
            storage_bytes: Some(50 << 30),
            pods: Some(10),
        },
    }
}

/// A service with nothing but an image, a port and a readiness probe.
pub fn minimal_workload(release: i64) -> Workload {
    let yaml = "apiVersion: enclii.dev/v1\nkind: Service\n\
                metadata: { project: solarpunk-saas, environment: prod, name: web }\n\
                spec: { runtime: { image: nginx, ports: [8080] }, health: { readiness: { tcpSocket: 8080 } } }\n";
    Workload {
        deployment: release,
        key: ServiceKey::new("solarpunk-saas", "prod", "web"),
        release,
        image: "registry.example/solarpunk-saas/web@sha256:".to_string() + &"ab".repeat(32),
        git_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        spec: ServiceSpec::parse(yaml, SpecFormat::Yaml).unwrap().spec,
        secrets: Vec::new(),
        routes: Vec::new(),
        quota: Quota::default(),
    }
}

/// A login of the add-on fixtures (fixture passwords, not secrets).
pub fn addon_login(user: &str, password: &str, kind: AddonKind) -> AddonCredentials {
    AddonCredentials {
        user: user.into(),
        password: password.into(),
        database: (kind == AddonKind::Postgres).then(|| "app".into()),
    }
}

/// Add-on `name` of the example environment: generation 1 (login `app`), or with `rotated` the
/// generation after (login `app_alt`, `app` still valid).
pub fn addon_workload(kind: AddonKind, name: &str, rotated: bool) -> AddonWorkload {
    let first = addon_login("app", "fixture-pw-gen1", kind);
    let (credentials, previous) = if rotated {
        (addon_login("app_alt", "fixture-pw-gen2", kind), Some(first))
    } else {
        (first, None)
    };
    AddonWorkload {
        key: AddonKey {
            project: "solarpunk-saas".into(),
            environment: "prod".into(),
            name: name.into(),
        },
        kind,
        image: kind.default_image(kind.default_version()),
        size_bytes: (kind == AddonKind::Postgres).then_some(5 << 30),
        credentials,
        previous,
    }
}

/// `stateful_set` as the API server reports it: observed, its pod created at the update
/// revision, `ready` of its 1 replica ready.
pub fn stateful_set_status(mut stateful_set: Value, ready: i64) -> Value {
    let name = stateful_set["metadata"]["name"].as_str().unwrap().to_string();
    stateful_set["metadata"]["generation"] = json!(1);
    stateful_set["metadata"]["uid"] = json!(format!("uid-{name}"));
    let revision = format!("{name}-6c5b8d9f4d");
    stateful_set["status"] = json!({
        "observedGeneration": 1, "replicas": 1, "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": 1, "updatedReplicas": 1, "currentRevision": revision,
        "updateRevision": revision, "collisionCount": 0
    });
    if ready == 0 {
        stateful_set["status"].as_object_mut().unwrap().remove("readyReplicas");
        stateful_set["status"]
            .as_object_mut()
            .unwrap()
            .remove("availableReplicas");
    }
    stateful_set
}

/// How a `Job` stands in [`job_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    Running,
    Succeeded,
    Failed,
}

/// `job` as the API server reports it (batch/v1 on 1.33: `SuccessCriteriaMet` / `FailureTarget`
/// precede `Complete` / `Failed`).
pub fn job_status(mut job: Value, phase: JobPhase) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    job["metadata"]["uid"] = json!(format!("uid-{name}"));
    job["metadata"]["generation"] = json!(1);
    let at = "2026-12-07T10:00:00Z";
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": "True", "reason": reason, "message": message,
               "lastProbeTime": at, "lastTransitionTime": at})
    };
    job["status"] = match phase {
        JobPhase::Running => json!({"startTime": at, "active": 1, "ready": 0, "uncountedTerminatedPods": {}}),
        JobPhase::Succeeded => json!({
            "startTime": at, "completionTime": at, "succeeded": 1, "ready": 0, "uncountedTerminatedPods": {},
            "conditions": [condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                           condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]
        }),
        JobPhase::Failed => json!({
            "startTime": at, "failed": 1, "ready": 0, "uncountedTerminatedPods": {},
            "conditions": [condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                           condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]
        }),
    };
    job
}

/// One request the target made, decoded, with the means to answer it.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    pub fn reply(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }

    pub fn reply_text(self, text: &str) {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Body::from(text.as_bytes().to_vec()))
            .unwrap();
        self.respond.send_response(response);
    }

    pub fn not_found(self) {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_string();
        self.reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": format!("\"{name}\" not found"), "reason": "NotFound", "code": 404}),
        );
    }

    fn describe(&self) -> String {
        format!("{} {}?{:?}", self.method, self.path, self.query)
    }
}

/// The next request, within 5 s.
pub async fn next_call(handle: &mut Handle) -> Call {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the target made no further request within 5 s")
        .expect("the client was dropped");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        body,
        respond,
    }
}

/// The next request, which must be `method path`.
pub async fn expect(handle: &mut Handle, method: &str, path: &str) -> Call {
    let call = next_call(handle).await;
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        (method, path),
        "unexpected request {}",
        call.describe()
    );
    call
}

/// The next request must be a forced server-side apply by `enclii` of the object at `path`;
/// it is answered with the object as the server would store it. Returns the applied body.
pub async fn expect_apply(handle: &mut Handle, path: &str) -> Value {
    let call = expect(handle, "PATCH", path).await;
    assert_eq!(
        call.query.get("fieldManager").map(String::as_str),
        Some("enclii"),
        "{}",
        call.describe()
    );
    assert_eq!(
        call.query.get("force").map(String::as_str),
        Some("true"),
        "{}",
        call.describe()
    );
    assert_eq!(call.content_type, "application/apply-patch+yaml", "{}", call.describe());
    let name = path.rsplit('/').next().unwrap();
    assert_eq!(
        call.body["metadata"]["name"],
        name,
        "applied object's name: {}",
        call.describe()
    );
    let applied = call.body.clone();
    let mut stored = applied.clone();
    stored["metadata"]["uid"] = json!(format!("uid-{name}"));
    stored["metadata"]["resourceVersion"] = json!("100");
    stored["metadata"]["generation"] = json!(1);
    call.reply(200, stored);
    applied
}

/// The next request must be a JSON merge patch by `enclii`; returns the patch.
pub async fn expect_merge_patch(handle: &mut Handle, path: &str, answer: Value) -> Value {
    let call = expect(handle, "PATCH", path).await;
    assert_eq!(call.content_type, "application/merge-patch+json", "{}", call.describe());
    assert_eq!(
        call.query.get("fieldManager").map(String::as_str),
        Some("enclii"),
        "{}",
        call.describe()
    );
    let patch = call.body.clone();
    call.reply(200, answer);
    patch
}

/// The next request must list `path` with exactly `selector`; answers with `items`.
pub async fn expect_list(handle: &mut Handle, path: &str, selector: &str, items: Vec<Value>) {
    let call = expect(handle, "GET", path).await;
    assert_eq!(
        call.query.get("labelSelector").map(String::as_str),
        Some(selector),
        "{}",
        call.describe()
    );
    call.reply(
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": items}),
    );
}

/// The next request must delete `path`; answered 404 (already gone) or 200.
pub async fn expect_delete(handle: &mut Handle, path: &str, exists: bool) {
    let call = expect(handle, "DELETE", path).await;
    assert_eq!(call.body["propagationPolicy"], "Background", "{}", call.describe());
    if exists {
        call.reply(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
        );
    } else {
        call.not_found();
    }
}

/// `deployment` as the server reports it once `replicas` replicas run its template.
pub fn rolled_out(mut deployment: Value, replicas: i64) -> Value {
    deployment["metadata"]["generation"] = json!(1);
    deployment["metadata"]["uid"] = json!("uid-deployment");
    if deployment["spec"]["replicas"].is_null() {
        deployment["spec"]["replicas"] = json!(replicas);
    }
    deployment["status"] = json!({
        "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability."}]
    });
    deployment
}

/// No request is pending or will come: the client is gone and nothing was sent.
pub async fn expect_no_more_requests(mut handle: Handle) {
    match tokio::time::timeout(Duration::from_secs(2), handle.next_request()).await {
        Ok(None) => {}
        Ok(Some((request, _))) => panic!("unexpected request {} {}", request.method(), request.uri()),
        Err(_) => panic!("the client was not dropped"),
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
