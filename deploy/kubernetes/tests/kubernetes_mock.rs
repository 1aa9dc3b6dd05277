//! Mock-backed tests of the Kubernetes target. No API server can run on these machines (see
//! `/work/shared/ENVIRONMENT.md`: no k3s, kube-apiserver or kwok is reachable), so:
//! - the manifests are snapshotted (insta, YAML) and checked against the Kubernetes 1.33 OpenAPI
//!   schemas with `kubernetes-validate --strict` (installed by `.ci/infra.sh`);
//! - the API calls go through kube's `tower-test` mock transport to a scripted stand-in for the
//!   API server that asserts each request (method, path, query, body) in order and answers with
//!   realistic objects.
//!
//! Nothing here proves that a real cluster accepts the requests or runs the pods.

#[path = "kubernetes_mock/addons.rs"]
mod addons;
mod common;
#[path = "kubernetes_mock/routes.rs"]
mod routes;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use enclii_deploy_contract::{DeployError, Quota, Rollout, ServiceKey, Target, Track};
use enclii_deploy_kubernetes::manifests::{self, ANNOTATION_CANARY_WEIGHT};
use enclii_deploy_kubernetes::{KubernetesConfig, KubernetesTarget};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// The Kubernetes version the manifests are validated against: k8s-openapi's `v1_33` feature.
const KUBERNETES_VERSION: &str = "1.33.0";

fn config() -> KubernetesConfig {
    KubernetesConfig {
        cluster_issuer: "letsencrypt-prod".into(),
        rollout_timeout: Duration::from_millis(400),
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

fn mock_target(config: KubernetesConfig) -> (KubernetesTarget, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (KubernetesTarget::new(client, config), handle)
}

fn to_yaml(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every object a first deploy of the example spec applies, in order.
fn full_spec_yaml() -> String {
    let workload = example_workload(42);
    let config = config();
    let environment = manifests::environment_objects(&workload.key, &workload.quota, &config);
    let objects = manifests::service_config_objects(&workload);
    let stable = manifests::stable_objects(&workload, &config);
    to_yaml(&manifests::documents(&environment, &objects, Some(&stable), None))
}

/// The objects a canary of release 43 at 10 % adds beside the stable release.
fn canary_yaml() -> String {
    let workload = example_workload(43);
    let config = config();
    let canary = manifests::canary_objects(&workload, &config, 10);
    let documents: Vec<Value> = [
        serde_json::to_value(&canary.deployment).unwrap(),
        serde_json::to_value(canary.service.as_ref().unwrap()).unwrap(),
        serde_json::to_value(canary.ingress.as_ref().unwrap()).unwrap(),
        serde_json::to_value(&canary.promotion).unwrap(),
    ]
    .into();
    to_yaml(&documents)
}

#[test]
fn mock_manifests_of_the_example_spec() {
    insta::assert_snapshot!("full_spec", full_spec_yaml());
}

#[test]
fn mock_manifests_of_a_canary_at_10_percent() {
    insta::assert_snapshot!("canary_10_percent", canary_yaml());
}

#[test]
fn mock_manifests_of_addons_and_their_converge_runs() {
    insta::assert_snapshot!("addons", addons::addons_yaml());
}

#[test]
fn mock_manifests_pass_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = [
        ("full-spec.yaml", full_spec_yaml()),
        ("canary.yaml", canary_yaml()),
        ("live-routes.yaml", routes::live_routes_yaml()),
        ("addons.yaml", addons::addons_json()),
    ]
    .into_iter()
    .map(|(name, yaml)| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    })
    .collect();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate could not be run ({e}); install it with `source .ci/infra.sh` (PyPI kubernetes-validate)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{stdout}\n{stderr}"
    );
    // 4 files: 12 + 4 + 1 + 10 documents, each reported as valid.
    assert_eq!(
        stdout.matches(" passed for resource ").count(),
        27,
        "every document validated:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("WARN") && !stderr.contains("WARN"),
        "no warnings:\n{stdout}\n{stderr}"
    );
}

#[test]
fn mock_quota_names_the_field_and_the_numbers() {
    let mut workload = example_workload(42);
    workload.quota = Quota {
        memory_bytes: Some(2 << 30),
        pods: Some(3),
        ..Default::default()
    };
    let err = workload.check_quota().unwrap_err().to_string();
    assert_eq!(
        err,
        "spec.runtime.memory × replicas.max = 2560Mi exceeds the environment's quota of 2Gi; lower \
         spec.runtime.replicas.max or spec.runtime.memory, or raise the quota; spec.runtime.replicas.max = 5 \
         exceeds the environment's quota of 3 pods; lower spec.runtime.replicas.max or raise the quota"
    );
}

const APPS: &str = "/apis/apps/v1/namespaces/enclii-solarpunk-saas-prod";
const CORE: &str = "/api/v1/namespaces/enclii-solarpunk-saas-prod";
const NETWORKING: &str = "/apis/networking.k8s.io/v1/namespaces/enclii-solarpunk-saas-prod";
const BATCH: &str = "/apis/batch/v1/namespaces/enclii-solarpunk-saas-prod";
const AUTOSCALING: &str = "/apis/autoscaling/v2/namespaces/enclii-solarpunk-saas-prod";

/// The namespace, quota, network policies, secret and volume every deploy applies first.
async fn expect_environment(handle: &mut Handle, with_quota_secret_volume: bool) {
    let namespace = expect_apply(handle, CORE).await;
    assert_eq!(namespace["kind"], "Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["enclii.dev/cost-center"],
        "solarpunk-saas"
    );
    if with_quota_secret_volume {
        let quota = expect_apply(handle, &format!("{CORE}/resourcequotas/enclii-quota")).await;
        assert_eq!(
            quota["spec"]["hard"],
            json!({"limits.memory": "4Gi", "pods": "10", "requests.cpu": "4000m", "requests.memory": "4Gi",
                   "requests.storage": "50Gi"})
        );
    }
    let deny = expect_apply(handle, &format!("{NETWORKING}/networkpolicies/enclii-default-deny")).await;
    assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let allow_in = expect_apply(handle, &format!("{NETWORKING}/networkpolicies/enclii-allow-ingress")).await;
    assert_eq!(
        allow_in["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    expect_apply(handle, &format!("{NETWORKING}/networkpolicies/enclii-allow-egress")).await;
    if with_quota_secret_volume {
        let secret = expect_apply(handle, &format!("{CORE}/secrets/api-prod")).await;
        // base64 of the fixture value, never the plain value.
        assert_eq!(
            secret["data"]["DATABASE_URL"],
            "cG9zdGdyZXM6Ly9maXh0dXJlLW5vdC1hLXNlY3JldEBkYi9hcGk="
        );
        let claim = expect_apply(handle, &format!("{CORE}/persistentvolumeclaims/api-uploads")).await;
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(claim["spec"]["storageClassName"], "standard");
    }
}

/// After the stable Deployment is healthy: its Service, Ingress, HPA and CronJob, the canary
/// objects deleted, stale objects of other releases looked for.
async fn expect_stable_rest(handle: &mut Handle, release: i64, canary_exists: bool) {
    let service = expect_apply(handle, &format!("{CORE}/services/api")).await;
    assert_eq!(
        service["spec"]["selector"],
        json!({"enclii.dev/service": "api", "enclii.dev/track": "stable"})
    );
    let ingress = expect_apply(handle, &format!("{NETWORKING}/ingresses/api")).await;
    assert_eq!(
        ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
        "letsencrypt-prod"
    );
    assert_eq!(
        ingress["spec"]["tls"],
        json!([{"hosts": ["api.example.dev"], "secretName": "api-tls"}])
    );
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let hpa = expect_apply(handle, &format!("{AUTOSCALING}/horizontalpodautoscalers/api")).await;
    assert_eq!(
        (hpa["spec"]["minReplicas"].clone(), hpa["spec"]["maxReplicas"].clone()),
        (json!(2), json!(5))
    );
    let cron = expect_apply(handle, &format!("{BATCH}/cronjobs/api-nightly-report")).await;
    assert_eq!(cron["spec"]["schedule"], "0 2 * * *");
    assert_eq!(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["node", "scripts/nightly.js"])
    );
    assert_eq!(cron["metadata"]["labels"]["enclii.dev/release"], release.to_string());
    expect_delete(handle, &format!("{NETWORKING}/ingresses/api-canary"), canary_exists).await;
    expect_delete(handle, &format!("{CORE}/services/api-canary"), canary_exists).await;
    expect_delete(handle, &format!("{APPS}/deployments/api-canary"), canary_exists).await;
    expect_delete(handle, &format!("{CORE}/configmaps/api-canary"), canary_exists).await;
    let stale = format!("enclii.dev/service=api,enclii.dev/track=stable,enclii.dev/release!={release}");
    expect_list(handle, &format!("{BATCH}/cronjobs"), &stale, vec![]).await;
    expect_list(
        handle,
        &format!("{AUTOSCALING}/horizontalpodautoscalers"),
        &stale,
        vec![],
    )
    .await;
    expect_list(handle, &format!("{NETWORKING}/ingresses"), &stale, vec![]).await;
    expect_list(handle, &format!("{CORE}/services"), &stale, vec![]).await;
}

#[tokio::test]
async fn mock_deploy_shift_promote_abort_pause_and_remove() {
    let (target, handle) = mock_target(config());
    let key = ServiceKey::new("solarpunk-saas", "prod", "api");
    let server = tokio::spawn(async move {
        let mut handle = handle;
        // deploy (Replace) of release 42, the first one.
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .not_found();
        expect_environment(&mut handle, true).await;
        let deployment = expect_apply(&mut handle, &format!("{APPS}/deployments/api")).await;
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": 1, "maxUnavailable": 0})
        );
        assert!(deployment["spec"]["replicas"].is_null(), "the HPA owns replicas");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], example_workload(42).image);
        assert_eq!(
            container["envFrom"],
            json!([{"secretRef": {"name": "api-prod", "optional": false}}])
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": 3000})
        );
        assert_eq!(
            container["resources"],
            json!({"limits": {"memory": "512Mi"}, "requests": {"cpu": "500m", "memory": "512Mi"}})
        );
        assert_eq!(deployment["metadata"]["labels"]["enclii.dev/release"], "42");
        assert!(
            !deployment.to_string().contains("fixture-not-a-secret"),
            "no secret value in the Deployment"
        );
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, rolled_out(deployment, 2));
        expect_stable_rest(&mut handle, 42, false).await;

        // shift the canary (release 43) to 50 %.
        let canary_43 =
            serde_json::to_value(manifests::canary_objects(&example_workload(43), &config(), 10).deployment).unwrap();
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api-canary"))
            .await
            .reply(200, rolled_out(canary_43.clone(), 2));
        let patch = expect_merge_patch(&mut handle, &format!("{NETWORKING}/ingresses/api-canary"), json!({})).await;
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {ANNOTATION_CANARY_WEIGHT: "50"}}})
        );

        // promote release 43: the stable objects stored with the canary are applied.
        let promotion =
            serde_json::to_value(manifests::canary_objects(&example_workload(43), &config(), 50).promotion).unwrap();
        expect(&mut handle, "GET", &format!("{CORE}/configmaps/api-canary"))
            .await
            .reply(200, promotion);
        let stable_42 =
            serde_json::to_value(manifests::stable_objects(&example_workload(42), &config()).deployment).unwrap();
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, rolled_out(stable_42, 2));
        let promoted = expect_apply(&mut handle, &format!("{APPS}/deployments/api")).await;
        assert_eq!(
            promoted["spec"]["template"]["spec"]["containers"][0]["image"],
            example_workload(43).image
        );
        assert_eq!(
            promoted["spec"]["selector"]["matchLabels"]["enclii.dev/track"],
            "stable"
        );
        assert_eq!(promoted["metadata"]["labels"]["enclii.dev/release"], "43");
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, rolled_out(promoted, 2));
        expect_stable_rest(&mut handle, 43, true).await;

        // abort the canary release 44.
        let canary_44 =
            serde_json::to_value(manifests::canary_objects(&example_workload(44), &config(), 10).deployment).unwrap();
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api-canary"))
            .await
            .reply(200, canary_44);
        expect_delete(&mut handle, &format!("{NETWORKING}/ingresses/api-canary"), true).await;
        expect_delete(&mut handle, &format!("{CORE}/services/api-canary"), true).await;
        expect_delete(&mut handle, &format!("{APPS}/deployments/api-canary"), true).await;
        expect_delete(&mut handle, &format!("{CORE}/configmaps/api-canary"), true).await;

        // pause: every Deployment to 0, cron jobs suspended.
        let stable_43 = serde_json::to_value(manifests::stable_objects(&example_workload(43), &config())).unwrap();
        expect_list(
            &mut handle,
            &format!("{APPS}/deployments"),
            "enclii.dev/service=api",
            vec![rolled_out(stable_43["deployment"].clone(), 2)],
        )
        .await;
        let scale = expect_merge_patch(
            &mut handle,
            &format!("{APPS}/deployments/api/scale"),
            json!({
                "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "api", "namespace": NS},
                "spec": {"replicas": 0}, "status": {"replicas": 2}
            }),
        )
        .await;
        assert_eq!(scale, json!({"spec": {"replicas": 0}}));
        expect_list(
            &mut handle,
            &format!("{BATCH}/cronjobs"),
            "enclii.dev/service=api",
            vec![stable_43["cron_jobs"][0].clone()],
        )
        .await;
        let suspend = expect_merge_patch(
            &mut handle,
            &format!("{BATCH}/cronjobs/api-nightly-report"),
            stable_43["cron_jobs"][0].clone(),
        )
        .await;
        assert_eq!(suspend, json!({"spec": {"suspend": true}}));

        // remove the whole environment (preview teardown): the namespace goes.
        expect_delete(&mut handle, CORE, true).await;
        handle
    });

    let outcome = target.deploy(&example_workload(42), Rollout::Replace).await;
    let shifted = target.shift(&key, 43, 50).await;
    let promoted = target.promote(&key, 43).await;
    let aborted = target.abort_canary(&key, 44).await;
    let paused = target.pause(&key).await;
    let removed = target
        .remove(
            &key,
            enclii_deploy_contract::Removal::Environment { keep_volumes: false },
        )
        .await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    let outcome = outcome.unwrap();
    assert_eq!(outcome.replicas, 2);
    assert_eq!(outcome.track, Track::Stable);
    assert_eq!(outcome.url.as_deref(), Some("https://api.example.dev/"));
    shifted.unwrap();
    promoted.unwrap();
    aborted.unwrap();
    paused.unwrap();
    removed.unwrap();
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_canary_deploy_starts_beside_the_stable_release_and_routes_its_share() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let stable_42 =
            serde_json::to_value(manifests::stable_objects(&example_workload(42), &config()).deployment).unwrap();
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, rolled_out(stable_42, 2));
        expect_environment(&mut handle, true).await;
        let canary = expect_apply(&mut handle, &format!("{APPS}/deployments/api-canary")).await;
        assert_eq!(canary["spec"]["replicas"], 2);
        assert_eq!(canary["spec"]["selector"]["matchLabels"]["enclii.dev/track"], "canary");
        let service = expect_apply(&mut handle, &format!("{CORE}/services/api-canary")).await;
        assert_eq!(service["spec"]["selector"]["enclii.dev/track"], "canary");
        let pending = expect_apply(&mut handle, &format!("{CORE}/configmaps/api-canary")).await;
        assert!(
            pending["data"]["stable.json"]
                .as_str()
                .unwrap()
                .contains(&example_workload(43).image)
        );
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api-canary"))
            .await
            .reply(200, rolled_out(canary, 2));
        let ingress = expect_apply(&mut handle, &format!("{NETWORKING}/ingresses/api-canary")).await;
        assert_eq!(
            ingress["metadata"]["annotations"],
            json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "10"})
        );
        assert!(ingress["spec"]["tls"].is_null(), "TLS stays with the stable Ingress");
        assert_eq!(
            ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            "api-canary"
        );
        handle
    });
    let outcome = target
        .deploy(&example_workload(43), Rollout::Canary { percent: 10 })
        .await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    let outcome = outcome.unwrap();
    assert_eq!((outcome.track, outcome.replicas), (Track::Canary, 2));
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_rollout_that_never_becomes_ready_is_unhealthy_and_removed() {
    let (target, handle) = mock_target(config());
    let web = "/apis/apps/v1/namespaces/enclii-solarpunk-saas-prod/deployments/web";
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect(&mut handle, "GET", web).await.not_found();
        expect_environment(&mut handle, false).await;
        let deployment = expect_apply(&mut handle, web).await;
        assert_eq!(deployment["spec"]["replicas"], 1);
        let mut stuck = deployment.clone();
        stuck["metadata"]["generation"] = json!(1);
        stuck["status"] = json!({
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                            "message": "Deployment does not have minimum availability."}]
        });
        let mut polls = 0;
        loop {
            let call = next_call(&mut handle).await;
            match (call.method.as_str(), call.path.as_str()) {
                ("GET", path) if path == web => {
                    polls += 1;
                    call.reply(200, stuck.clone());
                }
                ("DELETE", path) if path == web => {
                    call.reply(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
                    break;
                }
                (method, path) => panic!("unexpected {method} {path}"),
            }
        }
        assert!(polls >= 2, "the status was polled until the timeout ({polls} polls)");
        handle
    });
    let err = target.deploy(&minimal_workload(7), Rollout::Replace).await.unwrap_err();
    let handle = server.await.expect("the scripted API server's assertions hold");
    match err {
        DeployError::Unhealthy { release, detail, .. } => {
            assert_eq!(release, 7);
            assert_eq!(detail, "Deployment does not have minimum availability.");
        }
        other => panic!("expected Unhealthy, got {other:?}"),
    }
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_over_quota_is_refused_before_any_request() {
    let (target, handle) = mock_target(config());
    let mut workload = example_workload(42);
    workload.quota.memory_bytes = Some(2 << 30);
    let err = target.deploy(&workload, Rollout::Replace).await.unwrap_err();
    match &err {
        DeployError::Refused(message) => assert_eq!(
            message,
            "spec.runtime.memory × replicas.max = 2560Mi exceeds the environment's quota of 2Gi; lower \
             spec.runtime.replicas.max or spec.runtime.memory, or raise the quota"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(err.is_permanent());
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_release_metrics_without_prometheus_say_to_configure_it() {
    let (target, handle) = mock_target(config());
    let key = ServiceKey::new("solarpunk-saas", "prod", "api");
    let err = target
        .release_metrics(&key, 43, Duration::from_secs(120))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeployError::Metrics { message: m, .. } if m.contains("ENCLII_PROMETHEUS_URL")),
        "{err}"
    );
    drop(target);
    expect_no_more_requests(handle).await;
}

#[test]
fn mock_metric_queries_read_the_canary_backend() {
    let queries = enclii_deploy_kubernetes::target::metric_queries(NS, "api-canary", Duration::from_secs(120));
    assert_eq!(
        queries.errors,
        r#"sum(increase(nginx_ingress_controller_requests{exported_namespace="enclii-solarpunk-saas-prod",exported_service="api-canary",status=~"5.."}[120s]))"#
    );
}

#[tokio::test]
async fn mock_run_job_streams_masked_log_lines_and_returns_the_exit_code() {
    let (target, handle) = mock_target(config());
    let mut workload = minimal_workload(7);
    workload.secrets = vec![enclii_deploy_contract::SecretEnv {
        name: "web-env".into(),
        entries: vec![(
            "API_TOKEN".into(),
            enclii_deploy_contract::SecretValue::new("tok-fixture-123"),
        )],
    }];
    let job_path = format!("{BATCH}/jobs/web-migrate-5-2");
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect_environment(&mut handle, false).await;
        expect_apply(&mut handle, &format!("{CORE}/secrets/web-env")).await;
        let job = expect_apply(&mut handle, &job_path).await;
        assert_eq!(job["spec"]["backoffLimit"], 0, "the queue retries, not Kubernetes");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 60);
        let pod_spec = &job["spec"]["template"]["spec"];
        assert_eq!(pod_spec["restartPolicy"], "Never");
        assert_eq!(pod_spec["containers"][0]["args"], json!(["./migrate", "--up"]));
        assert_eq!(pod_spec["containers"][0]["envFrom"][0]["secretRef"]["name"], "web-env");
        let pod = |phase: &str, exit: Option<i32>| {
            let state = match exit {
                Some(code) => json!({"terminated": {"exitCode": code, "reason": "Error"}}),
                None => json!({"running": {}}),
            };
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-migrate-5-2-x7k2p", "namespace": NS},
                   "spec": {"containers": [{"name": "web", "image": "x"}]},
                   "status": {"phase": phase, "containerStatuses": [{"name": "web", "image": "x", "imageID": "",
                              "ready": false, "restartCount": 0, "state": state}]}})
        };
        let selector = "batch.kubernetes.io/job-name=web-migrate-5-2";
        expect_list(&mut handle, &format!("{CORE}/pods"), selector, vec![]).await;
        expect_list(
            &mut handle,
            &format!("{CORE}/pods"),
            selector,
            vec![pod("Running", None)],
        )
        .await;
        let log = expect(&mut handle, "GET", &format!("{CORE}/pods/web-migrate-5-2-x7k2p/log")).await;
        assert_eq!(log.query.get("follow").map(String::as_str), Some("true"));
        log.reply_text("migrating\nusing token tok-fixture-123\nfailed: table exists\n");
        expect(&mut handle, "GET", &format!("{CORE}/pods/web-migrate-5-2-x7k2p"))
            .await
            .reply(200, pod("Failed", Some(3)));
        handle
    });
    let run = enclii_deploy_contract::JobRunSpec {
        job: "migrate".into(),
        args: vec!["./migrate".into(), "--up".into()],
        run: 5,
        attempt: 2,
        timeout: Duration::from_secs(60),
    };
    let (log, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let code = target.run_job(&workload, &run, log).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    assert_eq!(code.unwrap(), 3);
    let mut received = Vec::new();
    while let Ok(line) = lines.try_recv() {
        received.push(line);
    }
    assert_eq!(received, ["migrating", "using token ***", "failed: table exists"]);
    drop(target);
    expect_no_more_requests(handle).await;
}

/// A stand-in for Prometheus' HTTP API: answers instant queries by their shape and records them.
async fn fake_prometheus() -> (String, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut queries = Vec::new();
        for _ in 0..3 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&request).lines().next().unwrap().to_string();
            let target = line.split(' ').nth(1).unwrap();
            let (_, query) = target.split_once("?query=").unwrap();
            let query = common::percent_decode(query);
            let value = if query.contains("histogram_quantile") {
                "0.25"
            } else if query.contains("status=~") {
                "3"
            } else {
                "100"
            };
            let body = json!({"status": "success", "data": {"resultType": "vector",
                              "result": [{"metric": {}, "value": [1700000000.0, value]}]}})
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            queries.push(query);
        }
        queries
    });
    (url, task)
}

#[tokio::test]
async fn mock_release_metrics_query_prometheus_for_the_canary_backend() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, prometheus) = fake_prometheus().await;
    let (target, handle) = mock_target(KubernetesConfig {
        prometheus_url: Some(url),
        ..config()
    });
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let canary =
            serde_json::to_value(manifests::canary_objects(&example_workload(43), &config(), 10).deployment).unwrap();
        expect_list(
            &mut handle,
            &format!("{APPS}/deployments"),
            "enclii.dev/service=api",
            vec![canary],
        )
        .await;
        handle
    });
    let key = ServiceKey::new("solarpunk-saas", "prod", "api");
    let metrics = target.release_metrics(&key, 43, Duration::from_secs(120)).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    let metrics = metrics.unwrap();
    assert_eq!((metrics.requests, metrics.errors), (100, 3));
    assert_eq!(metrics.p95, Some(Duration::from_millis(250)));
    let queries = prometheus.await.unwrap();
    assert!(
        queries
            .iter()
            .all(|q| q.contains(r#"exported_service="api-canary""#) && q.contains("[120s]")),
        "{queries:?}"
    );
    drop(target);
    expect_no_more_requests(handle).await;
}
