//! Which deployment decides what serves: the newest one created. A deployment whose job runs
//! after a newer deployment of the same service and environment exists (a retry after a
//! backoff, a job claimed late) ends superseded and supersedes nothing; the newest one supersedes
//! the older unfinished ones. Found by issue 14's chaos run: an older deploy finishing after a
//! newer one left the router serving the older release. A worker reading the deployment (or job
//! run) its job names waits for a row committed just after the job. Each test has its own
//! database.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;
use enclii_queue::redis::RedisQueue;
use enclii_store::{Deployment, DeploymentStatus, MasterKey, Store, StoreConfig, StoreError, Strategy, Supersession};
use support::{Db, open_store};

async fn ready_release(store: &Store, sha: char) -> i64 {
    enclii_store::fixtures::ready_release(store, sha).await.unwrap()
}

async fn deploy(store: &Store, release: i64) -> Deployment {
    enclii_store::fixtures::deploy(store, release, Strategy::Rolling)
        .await
        .unwrap()
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

/// Counts the reads of a record that commits only at the `commits_at`-th read.
fn committed_at(
    commits_at: u32,
) -> (
    Arc<AtomicU32>,
    impl FnMut() -> std::future::Ready<Result<i64, StoreError>>,
) {
    let reads = Arc::new(AtomicU32::new(0));
    let counter = reads.clone();
    let read = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if n >= commits_at {
            Ok(7)
        } else {
            Err(StoreError::NotFound("deployment 7 does not exist".into()))
        })
    };
    (reads, read)
}

/// With a separate queue (Redis) a `deploy` or `job-run` job can be claimed before the
/// transaction that enqueued it commits its row: the worker's read waits for the row while the
/// job is young, instead of failing the job on "does not exist". A row missing from an old job's
/// transaction (rolled back) and any row in the same database are not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_its_job_is_waited_for_with_a_separate_queue_only() {
    let prefix = format!("deployments_{:016x}", rand::random::<u64>());
    let queue = RedisQueue::connect_with_prefix(&common::redis_url(), &prefix)
        .await
        .expect("Redis must be running for the tests");
    let config = StoreConfig {
        database_url: common::fresh_sqlite_url(),
        queue_url: None,
        max_connections: 2,
        master_key: MasterKey::generate(),
    };
    let store = Store::open_with_queue(config, Some(Arc::new(queue))).await.unwrap();
    assert!(store.separate_queue());

    let (reads, read) = committed_at(4);
    assert_eq!(store.read_enqueued_with(Utc::now(), read).await.unwrap(), 7);
    assert_eq!(reads.load(Ordering::SeqCst), 4, "read again until the row committed");

    let (reads, read) = committed_at(u32::MAX);
    let enqueued_long_ago = Utc::now() - chrono::Duration::seconds(60);
    let missing = store.read_enqueued_with(enqueued_long_ago, read).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(reads.load(Ordering::SeqCst), 1, "an old job's row is not waited for");

    let (same_database, _guard) = open_store(Db::Sqlite).await;
    let (reads, read) = committed_at(u32::MAX);
    let missing = same_database.read_enqueued_with(Utc::now(), read).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "in the same database a job commits with its rows"
    );
}
