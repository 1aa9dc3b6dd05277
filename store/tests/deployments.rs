//! Which deployment decides what serves: the newest one created. A deployment whose job runs
//! after a newer deployment of the same service and environment exists (a retry after a
//! backoff, a job claimed late) ends superseded and supersedes nothing; the newest one supersedes
//! the older unfinished ones. Found by issue 14's chaos run: an older deploy finishing after a
//! newer one left the router serving the older release. Each test has its own database.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use enclii_store::{
    BuildTrigger, Deployment, DeploymentRequest, DeploymentStatus, ReleaseOutcome, ReleaseTrigger, Store, Strategy,
    Supersession,
};
use support::{Db, open_store};

/// A ready release of `shop/api` built from `sha`.
async fn ready_release(store: &Store, sha: char) -> i64 {
    let trigger = BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: sha.to_string().repeat(40),
        branch: "main".into(),
        deploy_to: None,
        trigger: ReleaseTrigger::Api,
    };
    let (release, _) = store.trigger_build("user:dev", &trigger).await.unwrap();
    let outcome = ReleaseOutcome {
        digest: Some(format!("sha256:{}", sha.to_string().repeat(64))),
        signature: Some(format!(
            "registry.example/shop/api:sha256-{}.sig",
            sha.to_string().repeat(64)
        )),
        ..Default::default()
    };
    store.finish_release(release.id, &outcome).await.unwrap();
    release.id
}

async fn deploy(store: &Store, release: i64) -> Deployment {
    let request = DeploymentRequest {
        project: "shop".into(),
        service: "api".into(),
        environment: "dev".into(),
        release_id: release,
        strategy: Strategy::Rolling,
        reason: "api".into(),
    };
    store.create_deployment("user:dev", &request).await.unwrap()
}

async fn a_deployment_started_after_a_newer_one_exists_is_superseded_by_it(db: Db) {
    let (store, _guard) = open_store(db).await;
    enclii_store::fixtures::shop_api(&store).await.unwrap();
    let (a, b) = (ready_release(&store, 'a').await, ready_release(&store, 'b').await);
    let older = deploy(&store, a).await;
    let newer = deploy(&store, b).await;

    // The newer deployment's job runs first: it supersedes the older one, still pending.
    assert_eq!(
        store.supersede_deployments(&newer).await.unwrap(),
        Supersession::Supersedes(vec![older.id])
    );
    // The older one's job comes late: it finds the newer one and ends, superseding nothing.
    assert_eq!(
        store.supersede_deployments(&older).await.unwrap(),
        Supersession::SupersededBy(newer.id)
    );
    let older = store.deployment(older.id).await.unwrap();
    assert_eq!(older.status, DeploymentStatus::Superseded);
    assert_eq!(
        store.deployment(newer.id).await.unwrap().status,
        DeploymentStatus::Pending,
        "the newer deployment goes on"
    );

    // Even when the older job runs first: a newer deployment exists, so it does not go ahead —
    // and the newest deployment, a rollback to `a`, supersedes the unfinished `b`.
    let rollback = deploy(&store, a).await;
    assert_eq!(
        store.supersede_deployments(&newer).await.unwrap(),
        Supersession::SupersededBy(rollback.id)
    );
    assert_eq!(
        store.supersede_deployments(&rollback).await.unwrap(),
        Supersession::Supersedes(vec![]),
        "`b` ended superseded already"
    );
    assert_eq!(
        store.deployment(newer.id).await.unwrap().status,
        DeploymentStatus::Superseded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_deployment_started_after_a_newer_one_exists_is_superseded_by_it() {
    a_deployment_started_after_a_newer_one_exists_is_superseded_by_it(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_deployment_started_after_a_newer_one_exists_is_superseded_by_it() {
    a_deployment_started_after_a_newer_one_exists_is_superseded_by_it(Db::Sqlite).await
}
