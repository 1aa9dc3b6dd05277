//! A release whose next step no worker can run says why, through the HTTP router, on PostgreSQL
//! and on SQLite: in the build's answer, the release, both release lists and the pipeline list,
//! `waiting` names the step's kind and the reason an alive worker gave for not running it (its
//! heartbeat's `unavailable`), or that no worker runs at all, or that none handles the kind; it is
//! `null` once a worker that runs the kind is alive, and while the step runs. The operators'
//! workers view shows each worker's `unavailable`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use enclii_queue::ClaimRequest;
use enclii_store::WorkerBeat;
use serde_json::{Value, json};
use support::{Db, TestApi, api, sha};

const NO_DOCKER: &str = "no Docker engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST";
const NO_WORKER: &str =
    "waiting: no worker can run clone (no worker is running; start `enclii server` with the worker role)";

async fn beat(t: &TestApi, id: &str, kinds: &[&str], unavailable: &[(&str, &str)]) {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    let unavailable: BTreeMap<String, String> = unavailable
        .iter()
        .map(|(k, r)| (k.to_string(), r.to_string()))
        .collect();
    t.store
        .worker_heartbeat(&WorkerBeat {
            id,
            host: "test-host",
            pid: 7,
            kinds: &kinds,
            concurrency: 4,
            unavailable: &unavailable,
        })
        .await
        .unwrap();
}

/// `waiting` of release `id` as every answer that shows it says it (they must agree).
async fn waiting(t: &TestApi, id: i64) -> Value {
    let one = t.admin("GET", &format!("/v1/releases/{id}"), None).await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    let find = |list: &Value, pointer: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r.pointer(&format!("{pointer}/id")) == Some(&json!(id)))
            .unwrap_or_else(|| panic!("release {id} in {list}"))
            .pointer(&format!("{pointer}/waiting"))
            .cloned()
            .unwrap_or_else(|| panic!("no `waiting` field: {list}"))
    };
    let project = t.admin("GET", "/v1/projects/shop/releases", None).await;
    let service = t.admin("GET", "/v1/projects/shop/services/api/releases", None).await;
    let runs = t.admin("GET", "/v1/projects/shop/pipelines", None).await;
    for (answer, shown) in [
        ("project releases", find(&project.body, "")),
        ("service releases", find(&service.body, "")),
        ("pipelines", find(&runs.body, "/release")),
    ] {
        assert_eq!(shown, one.body["waiting"], "{answer} agree with the release");
    }
    one.body["waiting"].clone()
}

async fn a_release_no_worker_can_build_says_why(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let build = |n: u32| format!(r#"{{"git_sha":"{}"}}"#, sha(n));

    // No worker has ever beaten: the build's own answer says so.
    let r = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(1)))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.body["release"]["waiting"], NO_WORKER, "{r:?}");
    let release = r.body["release"]["id"].as_i64().unwrap();
    assert_eq!(waiting(&t, release).await, NO_WORKER);

    // The server runs without a Docker engine: its worker says why it cannot clone.
    beat(
        &t,
        "w-deployer",
        &["ping", "deploy"],
        &[("clone", NO_DOCKER), ("build", NO_DOCKER)],
    )
    .await;
    assert_eq!(
        waiting(&t, release).await,
        format!("waiting: no worker can run clone ({NO_DOCKER})")
    );
    let workers = t.admin("GET", "/v1/queue/workers", None).await;
    assert_eq!(
        workers.body[0]["unavailable"],
        json!({"build": NO_DOCKER, "clone": NO_DOCKER}),
        "{workers:?}"
    );

    // A worker that neither runs nor explains the kind.
    t.store.worker_stopped("w-deployer").await.unwrap();
    beat(&t, "w-pinger", &["ping"], &[]).await;
    assert_eq!(
        waiting(&t, release).await,
        "waiting: no worker can run clone (no worker handles clone)"
    );
    let workers = t.admin("GET", "/v1/queue/workers", None).await;
    let pinger = workers
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w-pinger")
        .unwrap();
    assert_eq!(pinger["unavailable"], json!({}), "{workers:?}");

    // A builder alive beside them: nothing stops the release.
    beat(&t, "w-deployer", &["ping", "deploy"], &[("clone", NO_DOCKER)]).await;
    beat(&t, "w-builder", &["clone", "build", "push", "sbom", "sign"], &[]).await;
    assert_eq!(waiting(&t, release).await, Value::Null);

    // Every worker stopped: no worker runs.
    for id in ["w-deployer", "w-pinger", "w-builder"] {
        t.store.worker_stopped(id).await.unwrap();
    }
    assert_eq!(waiting(&t, release).await, NO_WORKER);

    // A step that runs waits for nothing; neither does a release that is not building.
    let claimed = t
        .store
        .queue()
        .claim(&ClaimRequest {
            worker: "w-gone".into(),
            kinds: vec!["clone".into()],
            limit: 1,
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(waiting(&t, release).await, Value::Null);
    let r = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(2)))
        .await;
    let ready = r.body["release"]["id"].as_i64().unwrap();
    assert_eq!(waiting(&t, ready).await, NO_WORKER);
    t.finish_signed(ready).await;
    assert_eq!(waiting(&t, ready).await, Value::Null);
}

/// The OpenAPI document describes both fields (a nullable string; an object of strings).
async fn the_openapi_document_describes_waiting_and_unavailable(db: Db) {
    let t = api(db).await;
    let doc = t.call("", "GET", "/v1/openapi.json", None).await.body;
    let schemas = &doc["components"]["schemas"];
    let waiting = &schemas["Release"]["properties"]["waiting"];
    assert_eq!(waiting["type"], json!(["string", "null"]), "{waiting}");
    assert!(
        waiting["description"].as_str().unwrap().contains("no worker can run"),
        "{waiting}"
    );
    let unavailable = &schemas["WorkerView"]["properties"]["unavailable"];
    assert_eq!(
        (&unavailable["type"], &unavailable["additionalProperties"]["type"]),
        (&json!("object"), &json!("string")),
        "{unavailable}"
    );
}

on_both_databases!(
    a_release_no_worker_can_build_says_why,
    the_openapi_document_describes_waiting_and_unavailable
);
