//! `apply_routes`: a service's routes reach its Ingresses without a deploy.

use enclii_deploy_contract::RouteBinding;

use super::*;

fn route(host: &str, path: &str, tls: bool) -> RouteBinding {
    RouteBinding {
        host: host.into(),
        path: path.into(),
        tls,
    }
}

fn key() -> ServiceKey {
    ServiceKey::new("solarpunk-saas", "prod", "api")
}

/// `object` as the API server returns it: with the fields it owns, and a label another field
/// manager added (which a rewrite by Enclii must not take over).
fn as_stored(mut object: Value) -> Value {
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    object["metadata"]["uid"] = json!(format!("uid-{name}"));
    object["metadata"]["resourceVersion"] = json!("4711");
    object["metadata"]["creationTimestamp"] = json!("2026-11-29T10:00:00Z");
    object["metadata"]["managedFields"] = json!([{"manager": "enclii", "operation": "Apply",
        "apiVersion": object["apiVersion"].clone(), "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    object["metadata"]["labels"]["team"] = json!("payments");
    object
}

fn stable_deployment(release: i64) -> Value {
    let stable = manifests::stable_objects(&example_workload(release), &config());
    as_stored(rolled_out(serde_json::to_value(stable.deployment).unwrap(), 2))
}

fn hosts(ingress: &Value) -> Vec<&str> {
    let rules = ingress["spec"]["rules"].as_array().unwrap();
    rules.iter().map(|r| r["host"].as_str().unwrap()).collect()
}

/// The first deploy of release 42 (as `mock_deploy_shift_promote_abort_pause_and_remove`);
/// returns the Deployment as the server stores it.
/// `apply_routes`' reads when the stable release runs and no canary does.
async fn expect_stable_alone(handle: &mut Handle) {
    expect(handle, "GET", &format!("{APPS}/deployments/api"))
        .await
        .reply(200, stable_deployment(42));
    expect(handle, "GET", &format!("{APPS}/deployments/api-canary"))
        .await
        .not_found();
}

async fn expect_first_deploy(handle: &mut Handle) -> Value {
    expect(handle, "GET", &format!("{APPS}/deployments/api"))
        .await
        .not_found();
    expect_environment(handle, true).await;
    let deployment = expect_apply(handle, &format!("{APPS}/deployments/api")).await;
    let stored = rolled_out(deployment, 2);
    expect(handle, "GET", &format!("{APPS}/deployments/api"))
        .await
        .reply(200, stored.clone());
    expect_stable_rest(handle, 42, false).await;
    as_stored(stored)
}

#[tokio::test]
async fn mock_apply_routes_after_a_deploy_rewrites_the_ingress_rules_and_tls_hosts() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let deployment = expect_first_deploy(&mut handle).await;
        // route-sync after a custom domain was verified: the running release's Ingress only.
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, deployment);
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api-canary"))
            .await
            .not_found();
        let ingress = expect_apply(&mut handle, &format!("{NETWORKING}/ingresses/api")).await;
        assert_eq!(hosts(&ingress), ["api.example.dev", "shop.example.com"]);
        let backend = &ingress["spec"]["rules"][1]["http"]["paths"][0];
        assert_eq!(
            backend,
            &json!({"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "api", "port": {"number": 3000}}}})
        );
        assert_eq!(
            ingress["spec"]["tls"],
            json!([{"hosts": ["api.example.dev", "shop.example.com"], "secretName": "api-tls"}])
        );
        // Rendered as the deploy renders it: same labels (release 42, not the other manager's)
        // and annotations (cert-manager's issuer, no redirect switch).
        let deployed = manifests::stable_objects(&example_workload(42), &config()).ingress;
        let deployed = serde_json::to_value(deployed.unwrap()).unwrap();
        assert_eq!(ingress["metadata"], deployed["metadata"]);
        assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
        handle
    });
    let outcome = target.deploy(&example_workload(42), Rollout::Replace).await;
    let routes = [
        route("api.example.dev", "/", true),
        route("shop.example.com", "/", true),
    ];
    let applied = target.apply_routes(&key(), &routes).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    outcome.unwrap();
    assert!(applied.unwrap(), "applied live");
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_apply_routes_without_routes_deletes_the_ingress() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect_stable_alone(&mut handle).await;
        expect_delete(&mut handle, &format!("{NETWORKING}/ingresses/api"), true).await;
        handle
    });
    let applied = target.apply_routes(&key(), &[]).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    assert!(applied.unwrap());
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_apply_routes_before_any_deploy_is_left_to_the_deploy() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .not_found();
        handle
    });
    let applied = target
        .apply_routes(&key(), &[route("shop.example.com", "/", true)])
        .await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    assert!(!applied.unwrap(), "nothing runs: the next deploy binds the routes");
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_apply_routes_with_a_plain_http_route_turns_the_https_redirect_off() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect_stable_alone(&mut handle).await;
        let ingress = expect_apply(&mut handle, &format!("{NETWORKING}/ingresses/api")).await;
        assert_eq!(hosts(&ingress), ["api.example.dev", "status.example.com"]);
        assert_eq!(
            ingress["metadata"]["annotations"],
            json!({"cert-manager.io/cluster-issuer": "letsencrypt-prod",
                   "nginx.ingress.kubernetes.io/ssl-redirect": "false"})
        );
        assert_eq!(
            ingress["spec"]["tls"],
            json!([{"hosts": ["api.example.dev"], "secretName": "api-tls"}]),
            "only the TLS host gets a certificate"
        );
        handle
    });
    let routes = [
        route("api.example.dev", "/", true),
        route("status.example.com", "/", false),
    ];
    let applied = target.apply_routes(&key(), &routes).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    assert!(applied.unwrap());
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_apply_routes_during_a_canary_rewrites_both_ingresses_and_the_pending_promotion() {
    let (target, handle) = mock_target(config());
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let canary = manifests::canary_objects(&example_workload(43), &config(), 30);
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api"))
            .await
            .reply(200, stable_deployment(42));
        let canary_deployment = serde_json::to_value(&canary.deployment).unwrap();
        expect(&mut handle, "GET", &format!("{APPS}/deployments/api-canary"))
            .await
            .reply(200, as_stored(rolled_out(canary_deployment, 2)));
        let canary_ingress = serde_json::to_value(canary.ingress.as_ref().unwrap()).unwrap();
        expect(&mut handle, "GET", &format!("{NETWORKING}/ingresses/api-canary"))
            .await
            .reply(200, as_stored(canary_ingress));
        let promotion = serde_json::to_value(&canary.promotion).unwrap();
        expect(&mut handle, "GET", &format!("{CORE}/configmaps/api-canary"))
            .await
            .reply(200, as_stored(promotion));

        let stable = expect_apply(&mut handle, &format!("{NETWORKING}/ingresses/api")).await;
        assert_eq!(hosts(&stable), ["api.example.dev", "shop.example.com"]);
        assert_eq!(stable["metadata"]["labels"]["enclii.dev/release"], "42");
        let canary = expect_apply(&mut handle, &format!("{NETWORKING}/ingresses/api-canary")).await;
        assert_eq!(hosts(&canary), hosts(&stable), "the split needs the same hosts");
        assert_eq!(
            canary["metadata"]["annotations"],
            json!({"nginx.ingress.kubernetes.io/canary": "true", ANNOTATION_CANARY_WEIGHT: "30"}),
            "the canary keeps its share"
        );
        assert_eq!(canary["metadata"]["labels"]["enclii.dev/track"], "canary");
        assert_eq!(
            canary["spec"]["rules"][1]["http"]["paths"][0]["backend"]["service"]["name"],
            "api-canary"
        );
        assert!(canary["spec"]["tls"].is_null(), "TLS stays with the stable Ingress");
        let pending = expect_apply(&mut handle, &format!("{CORE}/configmaps/api-canary")).await;
        let labels = serde_json::to_value(manifests::labels(&example_workload(43), Track::Canary)).unwrap();
        assert_eq!(
            pending["metadata"],
            json!({"name": "api-canary", "namespace": NS, "labels": labels}),
            "none of the server's fields, nor the other manager's label"
        );
        let promoted: Value = serde_json::from_str(pending["data"]["stable.json"].as_str().unwrap()).unwrap();
        assert_eq!(hosts(&promoted["ingress"]), ["api.example.dev", "shop.example.com"]);
        assert_eq!(promoted["ingress"]["metadata"]["labels"]["enclii.dev/release"], "43");
        assert_eq!(
            promoted["deployment"]["spec"]["template"]["spec"]["containers"][0]["image"],
            example_workload(43).image,
            "the rest of the promotion is kept"
        );
        handle
    });
    let routes = [
        route("api.example.dev", "/", true),
        route("shop.example.com", "/", true),
    ];
    let applied = target.apply_routes(&key(), &routes).await;
    let handle = server.await.expect("the scripted API server's assertions hold");
    assert!(applied.unwrap());
    drop(target);
    expect_no_more_requests(handle).await;
}

/// What `apply_routes` renders from a running Deployment with a plain-HTTP route, for the
/// schema check in `mock_manifests_pass_kubernetes_validate_strict`.
pub(super) fn live_routes_yaml() -> String {
    let deployment = manifests::stable_objects(&example_workload(42), &config()).deployment;
    let key = key();
    let routes = [
        route("api.example.dev", "/", true),
        route("status.example.com", "/", false),
    ];
    let input = manifests::IngressInput::of_deployment(&key, &deployment, &routes);
    let ingress = manifests::stable_ingress(&input, &config()).unwrap();
    to_yaml(&[serde_json::to_value(ingress).unwrap()])
}
