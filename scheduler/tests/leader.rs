//! Two schedulers on one database (two processes, each with its own store): only the leader acts,
//! so a due cron job fires once, an orphaned release is rebuilt once and an orphaned deployment
//! settled once; when the leader goes, the other takes over.

#[path = "../../queue/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use enclii_scheduler::{Scheduler, SchedulerConfig};
use enclii_store::{MasterKey, ServiceDraft, Store, StoreConfig};

async fn store(url: &str) -> Arc<Store> {
    let store = Store::open(StoreConfig {
        database_url: url.to_string(),
        queue_url: None,
        max_connections: 4,
        master_key: MasterKey::generate(),
    })
    .await
    .unwrap();
    Arc::new(store)
}

fn config(holder: &str) -> SchedulerConfig {
    SchedulerConfig {
        holder: holder.into(),
        lease_ttl: Duration::from_millis(600),
        tick: Duration::from_millis(100),
        ..Default::default()
    }
}

async fn only_the_leader_fires(url: String) {
    let (a, b) = (store(&url).await, store(&url).await);
    a.create_project("user:admin", "shop", "Shop").await.unwrap();
    // A whole Service Spec, as the API stores one (the store reads stored specs typed).
    let spec = serde_json::json!({
        "apiVersion": "enclii.dev/v1",
        "kind": "Service",
        "metadata": {"project": "shop", "environment": "dev", "name": "api"},
        "spec": {"jobs": [{"name": "report", "schedule": "* * * * *", "args": ["./report"]}]},
    });
    let draft = ServiceDraft {
        project: "shop".into(),
        name: "api".into(),
        environment: "dev".into(),
        repository: None,
        branch: None,
        spec: spec.to_string(),
    };
    a.apply_service("user:dev", &draft, &[]).await.unwrap();
    let mut first = Scheduler::new(a.clone(), config("first"));
    let mut second = Scheduler::new(b.clone(), config("second"));

    // Both tick at once, long after the job fell due: one leads, one run is queued.
    let now = chrono::Utc::now().timestamp_millis();
    first.tick(now).await; // the leader syncs the schedules from the spec
    let due = a.cron_schedules("shop").await.unwrap()[0].next_at;
    let (r1, r2) = tokio::join!(first.tick(due + 1), second.tick(due + 1));
    assert!(r1.leading && !r2.leading, "the first keeps the lease: {r1:?} {r2:?}");
    assert_eq!((r1.cron_queued, r2.cron_queued), (1, 0));
    for _ in 0..3 {
        let (r1, r2) = tokio::join!(first.tick(due + 1), second.tick(due + 1));
        assert_eq!(
            (r1.cron_queued + r1.cron_skipped, r2.cron_queued + r2.cron_skipped),
            (0, 0)
        );
    }
    assert_eq!(a.list_job_runs("shop", "api", None, 10).await.unwrap().len(), 1);

    // The leader stops (without resigning): the other takes over once the lease has expired, and
    // fires the next minute's run (skipped: the first run has not ended).
    drop(first);
    let next = due + 60_000;
    assert!(!second.tick(next).await.leading, "not before the lease expires");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = second.tick(next).await;
    assert!(report.leading);
    assert_eq!(report.cron_skipped, 1, "{report:?}");
    let runs = b.list_job_runs("shop", "api", None, 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["skipped", "queued"]
    );

    // A scheduler that resigns hands over at once.
    second.resign().await;
    let mut third = Scheduler::new(a.clone(), config("third"));
    assert!(third.tick(next).await.leading);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_the_leader_fires() {
    let db = common::test_database().await;
    only_the_leader_fires(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_the_leader_fires() {
    only_the_leader_fires(common::fresh_sqlite_url()).await;
}

/// Two schedulers on one database that settle orphans without a grace period, and the instant
/// both tick at.
fn eager_pair(a: &Arc<Store>, b: &Arc<Store>) -> (Scheduler, Scheduler, i64) {
    let eager = |holder: &str| SchedulerConfig {
        orphan_grace: Duration::ZERO,
        ..config(holder)
    };
    let first = Scheduler::new(a.clone(), eager("first"));
    let second = Scheduler::new(b.clone(), eager("second"));
    (first, second, chrono::Utc::now().timestamp_millis())
}

/// The leader's reconciliation pass settles a release left `building` without a live run (here:
/// its run cancelled in the queue alone, its release never told) — once, and only the leader's.
async fn only_the_leader_reconciles_orphaned_releases(url: String) {
    let (a, b) = (store(&url).await, store(&url).await);
    enclii_store::fixtures::shop_api(&a).await.unwrap();
    let trigger = enclii_store::BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: "a".repeat(40),
        branch: "main".into(),
        deploy_to: None,
        trigger: enclii_store::ReleaseTrigger::Api,
    };
    let (release, run) = a.trigger_build("user:dev", &trigger).await.unwrap();
    let clone = a.queue().pipeline(run.id).await.unwrap().unwrap().steps[0].job;
    a.queue().cancel(clone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut first, mut second, now) = eager_pair(&a, &b);
    let (r1, r2) = tokio::join!(first.tick(now), second.tick(now));
    assert_eq!(
        (r1.orphans + r2.orphans, r1.leading as usize + r2.leading as usize),
        (1, 1),
        "{r1:?} {r2:?}"
    );
    let rebuilt = a.release(release.id).await.unwrap();
    assert!(rebuilt.pipeline_id > Some(run.id), "{rebuilt:?}");
    assert_eq!(first.tick(now).await.orphans + second.tick(now).await.orphans, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_the_leader_reconciles_orphaned_releases() {
    let db = common::test_database().await;
    only_the_leader_reconciles_orphaned_releases(db.url.clone()).await;
}

/// The leader's reconciliation pass also settles a deployment left `pending` without a live
/// deploy job (here: the job cancelled through the queue) — once, and only the leader's.
async fn only_the_leader_reconciles_orphaned_deployments(url: String) {
    let (a, b) = (store(&url).await, store(&url).await);
    enclii_store::fixtures::shop_api(&a).await.unwrap();
    let release = enclii_store::fixtures::ready_release(&a, 'a').await.unwrap();
    let deployment = enclii_store::fixtures::deploy(&a, release, enclii_store::Strategy::Rolling)
        .await
        .unwrap();
    a.queue().cancel(deployment.job_id.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut first, mut second, now) = eager_pair(&a, &b);
    let (r1, r2) = tokio::join!(first.tick(now), second.tick(now));
    assert_eq!(
        (
            r1.orphaned_deployments + r2.orphaned_deployments,
            r1.leading as usize + r2.leading as usize
        ),
        (1, 1),
        "{r1:?} {r2:?}"
    );
    let failed = a.deployment(deployment.id).await.unwrap();
    assert_eq!(failed.status, enclii_store::DeploymentStatus::Failed, "{failed:?}");
    assert!(failed.detail.unwrap().contains("its deploy job was cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_the_leader_reconciles_orphaned_deployments() {
    let db = common::test_database().await;
    only_the_leader_reconciles_orphaned_deployments(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_the_leader_reconciles_orphaned_deployments() {
    only_the_leader_reconciles_orphaned_deployments(common::fresh_sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_the_leader_reconciles_orphaned_releases() {
    only_the_leader_reconciles_orphaned_releases(common::fresh_sqlite_url()).await;
}
