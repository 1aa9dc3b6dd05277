//! Sample resources for the tests of the crates built on the store (the platform never calls
//! these): one place for the project and service most of those tests start from.

use crate::{Result, ServiceDraft, Store};

/// Project `shop` and its service `api`, built from `github.com/org/shop` on `main` for `dev`.
pub async fn shop_api(store: &Store) -> Result<()> {
    store.create_project("user:admin", "shop", "Shop").await?;
    let spec = serde_json::json!({
        "apiVersion": "enclii.dev/v1",
        "kind": "Service",
        "metadata": {"project": "shop", "environment": "dev", "name": "api"},
        "spec": {"source": {"git": {"repository": "https://github.com/org/shop", "branch": "main"}}},
    });
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
