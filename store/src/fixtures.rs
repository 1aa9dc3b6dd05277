//! Sample resources for the tests of the crates built on the store (the platform never calls
//! these): one place for the project, service, releases and deployments most of those tests
//! start from.

use crate::{
    BuildTrigger, Deployment, DeploymentRequest, ReleaseOutcome, ReleaseTrigger, Result, ServiceDraft, Store, Strategy,
    WebhookDelivery, WebhookIntent,
};

/// GitHub's `pull_request` `opened` delivery `delivery_id` for pull request 7 of
/// `github.com/org/shop` (branch `feature`, commit `777…`).
pub fn pull_request_opened(delivery_id: &str) -> WebhookDelivery {
    WebhookDelivery {
        delivery_id: delivery_id.into(),
        event: "pull_request".into(),
        action: Some("opened".into()),
        intent: WebhookIntent::Preview {
            repository: "github.com/org/shop".into(),
            number: 7,
            branch: "feature".into(),
            sha: "7".repeat(40),
            at_ms: None,
        },
    }
}

/// Project `shop` and its service `api`, built from `github.com/org/shop` on `main` for `dev`.
pub async fn shop_api(store: &Store) -> Result<()> {
    store.create_project("user:admin", "shop", "Shop").await?;
    apply_shop_api(store, serde_json::json!({})).await
}

/// Applies the spec of `shop/api` with `extra` merged into its `spec` (a `deploy` section, …).
pub async fn apply_shop_api(store: &Store, extra: serde_json::Value) -> Result<()> {
    let mut spec = serde_json::json!({
        "apiVersion": "enclii.dev/v1",
        "kind": "Service",
        "metadata": {"project": "shop", "environment": "dev", "name": "api"},
        "spec": {"source": {"git": {"repository": "https://github.com/org/shop", "branch": "main"}}},
    });
    if let (Some(into), serde_json::Value::Object(extra)) = (spec["spec"].as_object_mut(), extra) {
        into.extend(extra);
    }
    let draft = ServiceDraft {
        project: "shop".into(),
        name: "api".into(),
        environment: "dev".into(),
        repository: Some("github.com/org/shop".into()),
        branch: Some("main".into()),
        spec: spec.to_string(),
    };
    store.apply_service("user:dev", &draft, &[]).await?;
    Ok(())
}

/// A ready, signed release of `shop/api` built from the commit `sha` repeated (`'a'` → `aaa…`),
/// finished as the build workers finish one.
pub async fn ready_release(store: &Store, sha: char) -> Result<i64> {
    let trigger = BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: sha.to_string().repeat(40),
        branch: "main".into(),
        deploy_to: None,
        trigger: ReleaseTrigger::Api,
    };
    let (release, _) = store.trigger_build("user:dev", &trigger).await?;
    let digest = sha.to_string().repeat(64);
    let outcome = ReleaseOutcome {
        digest: Some(format!("sha256:{digest}")),
        signature: Some(format!("registry.example/shop/api:sha256-{digest}.sig")),
        ..Default::default()
    };
    store.finish_release(release.id, &outcome).await?;
    Ok(release.id)
}

/// A deployment of `release` to `shop/api` in `dev`, as the API creates one.
pub async fn deploy(store: &Store, release: i64, strategy: Strategy) -> Result<Deployment> {
    let request = DeploymentRequest {
        project: "shop".into(),
        service: "api".into(),
        environment: "dev".into(),
        release_id: release,
        strategy,
        reason: "deploy".into(),
    };
    store.create_deployment("user:dev", &request).await
}
