//! A queue that lost its data (issue 14's chaos run: Redis restarted without persistence, the
//! control plane in PostgreSQL) leaves no release `building` for ever and hands out no id twice:
//! the store raises the queue's id sequences above the ids it holds when it opens and at every
//! reconciliation pass, and a pass builds orphaned releases again with a fresh run (or marks them
//! superseded by a newer release), once, however many reconcilers run. Each test has its own
//! database and Redis key prefix; on a queue in the same database a pass finds nothing.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use enclii_domain::pipeline::RunSubject;
use enclii_queue::redis::RedisQueue;
use enclii_queue::{Backend, PipelineRecord};
use enclii_store::{
    AuditFilter, BuildTrigger, MasterKey, OrphanReason, RECONCILER, ReleaseStatus, ReleaseTrigger, RunRelease,
    Settlement, Store, StoreConfig,
};
use support::Db;

/// The control plane in a database of its own, the queue in Redis under a prefix of its own.
struct Platform {
    store: Arc<Store>,
    url: String,
    prefix: String,
    _db: Option<common::TestDatabase>,
}

impl Platform {
    async fn new(db: Db) -> Self {
        let (url, guard) = match db {
            Db::Postgres => {
                let guard = common::test_database().await;
                (guard.url.clone(), Some(guard))
            }
            Db::Sqlite => (common::fresh_sqlite_url(), None),
        };
        let prefix = format!("orphans_{:016x}", rand::random::<u64>());
        Platform {
            store: open(&url, &prefix).await,
            url,
            prefix,
            _db: guard,
        }
    }

    /// Another process of the platform: a store of its own on the same database and queue.
    async fn open(&self) -> Arc<Store> {
        open(&self.url, &self.prefix).await
    }

    /// What `redis-cli shutdown nosave` and a restart without persistence leave: no key at all.
    async fn lose_queue_data(&self) {
        let client = redis::Client::open(common::redis_url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut con).await.unwrap();
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let client = redis::Client::open(common::redis_url()).ok()?;
            let mut con = client.get_connection().ok()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut con).ok()?;
            (!keys.is_empty()).then(|| redis::cmd("DEL").arg(&keys).query::<i64>(&mut con).ok())
        })
        .join();
    }
}

async fn open(url: &str, prefix: &str) -> Arc<Store> {
    let queue = RedisQueue::connect_with_prefix(&common::redis_url(), prefix)
        .await
        .expect("Redis must be running for the tests");
    let queue: Arc<dyn Backend> = Arc::new(queue);
    Arc::new(Store::open_with_queue(config(url), Some(queue)).await.unwrap())
}

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        database_url: url.to_string(),
        queue_url: None,
        max_connections: 4,
        master_key: MasterKey::generate(),
    }
}

/// Project `shop`, service `api` building `github.com/org/shop` on `main` for `dev`.
async fn service(store: &Store) {
    enclii_store::fixtures::shop_api(store).await.unwrap();
}

/// A push of `sha` to `main`, as a webhook records it (deployed to `dev` when ready).
fn push(sha: char) -> BuildTrigger {
    BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: sha.to_string().repeat(40),
        branch: "main".into(),
        deploy_to: Some("dev".into()),
        trigger: ReleaseTrigger::Push,
    }
}

async fn run(store: &Store, id: i64) -> Option<PipelineRecord> {
    store.queue().pipeline(id).await.unwrap()
}

/// Builds `sha` and records its clone step as a worker would; returns the release and the run.
async fn build(store: &Store, sha: char) -> (enclii_store::Release, PipelineRecord) {
    let (release, enqueued) = store.trigger_build("webhook", &push(sha)).await.unwrap();
    let record = run(store, enqueued.id).await.expect("the run is queued");
    store
        .start_release_step(release.id, "clone", record.steps[0].job, 1)
        .await
        .unwrap();
    (release, record)
}

const NOW: Duration = Duration::ZERO;

async fn a_release_whose_run_was_lost_is_built_again_and_no_id_is_handed_out_twice(db: Db) {
    let p = Platform::new(db).await;
    service(&p.store).await;
    let (release, old_run) = build(&p.store, 'a').await;
    // The job id the control plane holds: the clone step it recorded.
    let held_job = old_run.steps[0].job;

    p.lose_queue_data().await;
    assert!(run(&p.store, old_run.id).await.is_none());
    // Inside the grace period nothing is touched: the run may just not be visible yet.
    let pass = p.store.reconcile_orphans(Duration::from_secs(60), 0, 50).await.unwrap();
    assert!(pass.orphans.is_empty(), "{pass:?}");
    let pass = p.store.reconcile_orphans(NOW, 0, 50).await.unwrap();
    assert_eq!(pass.floors, (old_run.id, held_job));
    assert_eq!(pass.orphans.len(), 1, "{pass:?}");
    let orphan = &pass.orphans[0];
    assert_eq!((orphan.release.id, &orphan.reason), (release.id, &OrphanReason::Lost));
    assert_eq!(orphan.reason.to_string(), "its pipeline was lost from the queue");
    let Settlement::Rebuilt { pipeline } = orphan.settled else {
        panic!("{orphan:?}")
    };
    assert!(pipeline > old_run.id, "a fresh run id: {pipeline} after {}", old_run.id);

    let rebuilt = p.store.release(release.id).await.unwrap();
    assert_eq!(
        (rebuilt.status, rebuilt.pipeline_id),
        (ReleaseStatus::Building, Some(pipeline))
    );
    let new_run = run(&p.store, pipeline).await.expect("the new run is queued");
    assert!(new_run.steps.iter().all(|s| s.job > held_job), "job ids are not reused");
    assert!(
        new_run.steps.iter().any(|s| s.name == "deploy"),
        "a push's release still deploys"
    );
    assert_eq!(
        p.store.release_of_pipeline(&new_run).await.unwrap().map(|r| r.id),
        Some(release.id)
    );
    let audit = p
        .store
        .list_audit(&AuditFilter {
            actor: Some(RECONCILER.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].action.as_str(), audit[0].entity.as_str()),
        ("release.rebuild", &*release.id.to_string())
    );
    assert!(
        audit[0].diff.contains("its pipeline was lost from the queue"),
        "{}",
        audit[0].diff
    );

    // The next pass finds the release's new run alive; a fresh build reuses no id either.
    assert!(p.store.reconcile_orphans(NOW, 0, 50).await.unwrap().orphans.is_empty());
    let (_, fresh) = p.store.trigger_build("webhook", &push('b')).await.unwrap();
    assert!(fresh.id > pipeline);
}

async fn a_store_opening_on_a_queue_that_lost_its_data_hands_out_no_id_twice(db: Db) {
    let p = Platform::new(db).await;
    service(&p.store).await;
    let (_, old_run) = build(&p.store, 'a').await;
    p.lose_queue_data().await;
    // The platform restarts: opening the store raises the sequences before anything is enqueued.
    let store = p.open().await;
    let (release, fresh) = store.trigger_build("webhook", &push('b')).await.unwrap();
    assert!(fresh.id > old_run.id, "pipeline {} handed out again", fresh.id);
    let record = run(&store, fresh.id).await.unwrap();
    let held_job = old_run.steps[0].job;
    assert!(
        record.steps.iter().all(|s| s.job > held_job),
        "job ids handed out again"
    );
    assert_eq!(
        store.release_of_pipeline(&record).await.unwrap().map(|r| r.id),
        Some(release.id)
    );
}

async fn an_orphan_with_a_newer_release_is_superseded_by_it(db: Db) {
    let p = Platform::new(db).await;
    service(&p.store).await;
    let (older, _) = build(&p.store, 'a').await;
    p.lose_queue_data().await;
    // The next push after the loss supersedes no run (the queue forgot the older one).
    let (newer, newer_run) = p.store.trigger_build("webhook", &push('b')).await.unwrap();
    assert!(newer_run.superseded.is_empty());
    assert_eq!(p.store.release(older.id).await.unwrap().status, ReleaseStatus::Building);
    let pass = p.store.reconcile_orphans(NOW, 0, 50).await.unwrap();
    assert_eq!(pass.orphans.len(), 1, "only the older release is orphaned: {pass:?}");
    assert_eq!(pass.orphans[0].settled, Settlement::Superseded { by: newer.id });
    let older = p.store.release(older.id).await.unwrap();
    assert_eq!(older.status, ReleaseStatus::Superseded);
    assert!(
        older
            .failure
            .unwrap()
            .contains(&format!("superseded by release {}", newer.id))
    );
    let newer_now = p.store.release(newer.id).await.unwrap();
    assert_eq!(
        (newer_now.status, newer_now.pipeline_id),
        (ReleaseStatus::Building, Some(newer_run.id)),
        "the newer release's live run is left alone"
    );
}

async fn a_run_whose_id_names_another_release_is_not_its_run(db: Db) {
    let p = Platform::new(db).await;
    service(&p.store).await;
    let (release, old_run) = build(&p.store, 'a').await;
    p.lose_queue_data().await;
    // The id handed out again (what happened before the sequences were raised): another service
    // and commit's run now holds the release's pipeline id.
    let mut other = enclii_domain::pipeline::build_and_deploy(&enclii_domain::pipeline::BuildRequest {
        project: "shop".into(),
        service: "web".into(),
        repository: "https://github.com/org/shop".into(),
        branch: "main".into(),
        commit: "f".repeat(40),
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        image: "shop/web".into(),
        deploy_to: None,
    })
    .unwrap();
    other.unique_key = None;
    let reused = p.store.queue().enqueue_pipeline(other).await.unwrap();
    assert_eq!(reused.id, old_run.id, "Redis started its ids again from 1");
    let reused_run = run(&p.store, reused.id).await.unwrap();

    // A step of that run never takes the release for its own; nor does an operator's cancel.
    let web = RunSubject::new("web", &"f".repeat(40));
    assert!(matches!(
        p.store.release_of_run(reused.id, &web).await.unwrap(),
        RunRelease::NotOurs(r) if r.id == release.id
    ));
    assert_eq!(p.store.release_of_pipeline(&reused_run).await.unwrap(), None);
    let api = RunSubject::new("api", &"a".repeat(40));
    assert!(matches!(
        p.store.release_of_run(reused.id, &api).await.unwrap(),
        RunRelease::Ours(_)
    ));

    let pass = p.store.reconcile_orphans(NOW, 0, 50).await.unwrap();
    assert_eq!(pass.orphans.len(), 1, "{pass:?}");
    assert_eq!(pass.orphans[0].reason, OrphanReason::NotItsRun);
    let Settlement::Rebuilt { pipeline } = pass.orphans[0].settled else {
        panic!("{pass:?}")
    };
    assert!(pipeline > reused.id);
}

async fn reconcilers_running_at_once_settle_an_orphan_once(db: Db) {
    let p = Platform::new(db).await;
    service(&p.store).await;
    let (release, _) = build(&p.store, 'a').await;
    p.lose_queue_data().await;
    let stores = [p.store.clone(), p.open().await, p.open().await];
    let passes = futures_join(&stores).await;
    let settled: Vec<_> = passes.iter().flat_map(|pass| pass.orphans.iter()).collect();
    assert_eq!(settled.len(), 1, "{passes:?}");
    let Settlement::Rebuilt { pipeline } = settled[0].settled else {
        panic!("{settled:?}")
    };
    assert_eq!(p.store.release(release.id).await.unwrap().pipeline_id, Some(pipeline));
    let rebuilds = p
        .store
        .list_audit(&AuditFilter {
            action: Some("release.rebuild".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rebuilds.len(), 1);
}

async fn futures_join(stores: &[Arc<Store>; 3]) -> Vec<enclii_store::ReconcilePass> {
    let pass = |store: Arc<Store>| async move { store.reconcile_orphans(NOW, 0, 50).await.unwrap() };
    let (a, b, c) = tokio::join!(
        pass(stores[0].clone()),
        pass(stores[1].clone()),
        pass(stores[2].clone())
    );
    vec![a, b, c]
}

/// With the queue in the control plane's database a run commits with its release: a pass finds
/// nothing. A run that did end without its release (a step cancelled in the queue alone) is
/// found the same way and built again.
async fn a_queue_in_the_same_database_leaves_no_orphans(db: Db) {
    let (store, _guard) = support::open_store(db).await;
    service(&store).await;
    let (release, old) = build(&store, 'a').await;
    build(&store, 'b').await;
    let pass = store.reconcile_orphans(NOW, 0, 50).await.unwrap();
    assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");
    // `a` was superseded by `b`; build `c` on another branch and cancel its clone in the queue.
    let mut other = push('c');
    other.branch = "other".into();
    let (release_c, run_c) = store.trigger_build("user:dev", &other).await.unwrap();
    let clone = run(&store, run_c.id).await.unwrap().steps[0].job;
    store.queue().cancel(clone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pass = store.reconcile_orphans(NOW, 0, 50).await.unwrap();
    assert_eq!(pass.orphans.len(), 1, "{pass:?}");
    assert_eq!(pass.orphans[0].release.id, release_c.id);
    assert_eq!(
        pass.orphans[0].reason,
        OrphanReason::Ended(enclii_queue::PipelineState::Cancelled)
    );
    assert_eq!(
        store.release(release.id).await.unwrap().status,
        ReleaseStatus::Superseded
    );
    assert_ne!(old.id, run_c.id);
}

mod postgres_with_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_whose_run_was_lost_is_built_again_and_no_id_is_handed_out_twice() {
        super::a_release_whose_run_was_lost_is_built_again_and_no_id_is_handed_out_twice(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_opening_on_a_queue_that_lost_its_data_hands_out_no_id_twice() {
        super::a_store_opening_on_a_queue_that_lost_its_data_hands_out_no_id_twice(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orphan_with_a_newer_release_is_superseded_by_it() {
        super::an_orphan_with_a_newer_release_is_superseded_by_it(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_whose_id_names_another_release_is_not_its_run() {
        super::a_run_whose_id_names_another_release_is_not_its_run(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconcilers_running_at_once_settle_an_orphan_once() {
        super::reconcilers_running_at_once_settle_an_orphan_once(Db::Postgres).await
    }
}

mod sqlite_with_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_whose_run_was_lost_is_built_again_and_no_id_is_handed_out_twice() {
        super::a_release_whose_run_was_lost_is_built_again_and_no_id_is_handed_out_twice(Db::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconcilers_running_at_once_settle_an_orphan_once() {
        super::reconcilers_running_at_once_settle_an_orphan_once(Db::Sqlite).await
    }
}

mod same_database {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_leaves_no_orphans() {
        super::a_queue_in_the_same_database_leaves_no_orphans(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_leaves_no_orphans() {
        super::a_queue_in_the_same_database_leaves_no_orphans(Db::Sqlite).await
    }
}
