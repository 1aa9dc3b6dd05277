//! No deployment stays `pending` or `running` without a live deploy job (issue 14's chaos run:
//! after a Redis data loss a deployment whose `deploy` job was lost stayed `running` for ever).
//! A reconciliation pass deploys again a deployment whose job the queue lost (or whose job id now
//! names another job) — once, however many reconcilers run —, lets a newer deployment supersede
//! it, fails one whose deploy job died (a worker `kill -9`ed during the last attempt) or was
//! cancelled through the queue, with the reason, and enqueues again the lost analysis of a
//! canary's step. Each test has its own database, and its own Redis key prefix when the queue is
//! separate; the dead, cancelled and completed cases also run on a queue in the same database.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use enclii_queue::redis::RedisQueue;
use enclii_queue::{Ack, Backend, ClaimRequest, ClaimedJob, JobState, NewJob, Outcome};
use enclii_store::{
    AuditFilter, Deployment, DeploymentOrphanReason, DeploymentPass, DeploymentSettlement, DeploymentStatus,
    DeploymentUpdate, MasterKey, RECONCILER, Store, StoreConfig, Strategy,
};
use support::Db;

/// The control plane in a database of its own; the queue in Redis under a prefix of its own, or
/// (`separate: false`) in the same database.
struct Platform {
    store: Arc<Store>,
    url: String,
    prefix: Option<String>,
    _db: Option<common::TestDatabase>,
}

impl Platform {
    async fn new(db: Db, separate: bool) -> Self {
        let (url, guard) = match db {
            Db::Postgres => {
                let guard = common::test_database().await;
                (guard.url.clone(), Some(guard))
            }
            Db::Sqlite => (common::fresh_sqlite_url(), None),
        };
        let prefix = separate.then(|| format!("deployment_orphans_{:016x}", rand::random::<u64>()));
        let store = open(&url, prefix.as_deref()).await;
        enclii_store::fixtures::shop_api(&store).await.unwrap();
        Platform {
            store,
            url,
            prefix,
            _db: guard,
        }
    }

    /// Another process of the platform: a store of its own on the same database and queue.
    async fn open(&self) -> Arc<Store> {
        open(&self.url, self.prefix.as_deref()).await
    }

    fn queue(&self) -> Arc<dyn Backend> {
        self.store.queue()
    }

    /// What `redis-cli shutdown nosave` and a restart without persistence leave: no key at all.
    async fn lose_queue_data(&self) {
        let prefix = self
            .prefix
            .as_deref()
            .expect("only a separate queue loses its data alone");
        let client = redis::Client::open(common::redis_url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut con).await.unwrap();
        }
    }

    async fn pass(&self) -> DeploymentPass {
        // Updated-at times are in milliseconds: let the last change fall before the cutoff.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.store.reconcile_deployments(NOW, 0, 50).await.unwrap()
    }

    async fn audit(&self, action: &str) -> Vec<enclii_store::AuditEvent> {
        self.store
            .list_audit(&AuditFilter {
                actor: Some(RECONCILER.into()),
                action: Some(action.into()),
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let Some(prefix) = self.prefix.clone() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let client = redis::Client::open(common::redis_url()).ok()?;
            let mut con = client.get_connection().ok()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut con).ok()?;
            (!keys.is_empty()).then(|| redis::cmd("DEL").arg(&keys).query::<i64>(&mut con).ok())
        })
        .join();
    }
}

async fn open(url: &str, prefix: Option<&str>) -> Arc<Store> {
    let queue: Option<Arc<dyn Backend>> = match prefix {
        Some(prefix) => {
            let queue = RedisQueue::connect_with_prefix(&common::redis_url(), prefix)
                .await
                .expect("Redis must be running for the tests");
            Some(Arc::new(queue))
        }
        None => None,
    };
    let config = StoreConfig {
        database_url: url.to_string(),
        queue_url: None,
        max_connections: 4,
        master_key: MasterKey::generate(),
    };
    Arc::new(Store::open_with_queue(config, queue).await.unwrap())
}

const NOW: Duration = Duration::ZERO;

async fn ready_release(store: &Store, sha: char) -> i64 {
    enclii_store::fixtures::ready_release(store, sha).await.unwrap()
}

async fn deploy(store: &Store, release: i64, strategy: Strategy) -> Deployment {
    enclii_store::fixtures::deploy(store, release, strategy).await.unwrap()
}

/// A worker claims the deploy job.
async fn claim_deploy(queue: &dyn Backend, worker: &str, lease: Duration) -> ClaimedJob {
    claim(queue, "deploy", worker, lease).await
}

/// A worker claims a job of `kind` (due scheduled jobs are made available by claims, at most
/// every 50 ms on PostgreSQL: try for a while).
async fn claim(queue: &dyn Backend, kind: &str, worker: &str, lease: Duration) -> ClaimedJob {
    let request = ClaimRequest {
        worker: worker.into(),
        kinds: vec![kind.into()],
        limit: 1,
        lease,
    };
    for _ in 0..100 {
        if let Some(job) = queue.claim(&request).await.unwrap().pop() {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {kind} job to claim");
}

/// The deploy handler's first step: the deployment is running.
async fn mark_running(store: &Store, deployment: &Deployment) {
    let running = DeploymentUpdate {
        status: DeploymentStatus::Running,
        ..DeploymentUpdate::default()
    };
    store
        .update_deployment("system:deployer", deployment.id, &running, None)
        .await
        .unwrap();
}

fn only(pass: &DeploymentPass) -> &enclii_store::DeploymentOrphan {
    assert!(pass.failed.is_empty(), "{pass:?}");
    assert_eq!(pass.orphans.len(), 1, "{pass:?}");
    &pass.orphans[0]
}

async fn a_deployment_whose_job_was_lost_deploys_again_once(db: Db) {
    let p = Platform::new(db, true).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    let old_job = deployment.job_id.unwrap();
    // Its worker started it: the replica is starting when Redis loses everything.
    claim_deploy(p.queue().as_ref(), "w1", Duration::from_secs(30)).await;
    mark_running(&p.store, &deployment).await;
    p.lose_queue_data().await;
    assert!(p.queue().job(old_job).await.unwrap().is_none());

    // Inside the grace period nothing is touched.
    let pass = p
        .store
        .reconcile_deployments(Duration::from_secs(60), 0, 50)
        .await
        .unwrap();
    assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");

    // Three reconcilers at once: one deploys it again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let stores = [p.store.clone(), p.open().await, p.open().await];
    let reconcile = |store: Arc<Store>| async move { store.reconcile_deployments(NOW, 0, 50).await.unwrap() };
    let (a, b, c) = tokio::join!(
        reconcile(stores[0].clone()),
        reconcile(stores[1].clone()),
        reconcile(stores[2].clone())
    );
    let settled: Vec<_> = [&a, &b, &c].into_iter().flat_map(|pass| pass.orphans.iter()).collect();
    assert!(
        [&a, &b, &c].iter().all(|pass| pass.failed.is_empty()),
        "{a:?} {b:?} {c:?}"
    );
    assert_eq!(settled.len(), 1, "settled once: {a:?} {b:?} {c:?}");
    let orphan = settled[0];
    assert_eq!(
        (orphan.deployment.id, &orphan.reason),
        (deployment.id, &DeploymentOrphanReason::Lost)
    );
    assert_eq!(orphan.reason.to_string(), "its deploy job was lost from the queue");
    let DeploymentSettlement::Redeployed { job } = orphan.settled else {
        panic!("{orphan:?}")
    };
    assert!(job > old_job, "a fresh job id: {job} after {old_job}");

    let now = p.store.deployment(deployment.id).await.unwrap();
    assert_eq!((now.status, now.job_id), (DeploymentStatus::Pending, Some(job)));
    assert!(now.detail.unwrap().contains("deploying again"));
    let record = p.queue().job(job).await.unwrap().expect("the new deploy job is queued");
    assert_eq!((record.kind.as_str(), record.state), ("deploy", JobState::Available));
    assert_eq!(record.payload["deployment"], deployment.id);
    assert_eq!(record.payload["commit"], "a".repeat(40));
    let audit = p.audit("deployment.redeploy").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].entity, deployment.id.to_string());
    assert!(audit[0].diff.contains("its deploy job was lost"), "{}", audit[0].diff);

    // Its new job is alive: the next pass leaves it alone.
    let pass = p.pass().await;
    assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");
}

async fn a_job_id_naming_another_job_is_not_its_job(db: Db) {
    let p = Platform::new(db, true).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    let old_job = deployment.job_id.unwrap();
    p.lose_queue_data().await;
    // The id handed out again (what happened before the sequences were raised): another kind of
    // job of the project now holds the deployment's job id.
    let mut reused = 0;
    while reused < old_job {
        let job = NewJob::new(
            "cost-sample",
            "shop",
            serde_json::json!({"service": "api", "environment": "dev"}),
        );
        reused = p.queue().enqueue(vec![job]).await.unwrap()[0].id;
    }
    assert_eq!(reused, old_job, "Redis started its ids again from 1");

    let orphan = only(&p.pass().await).clone();
    assert_eq!(orphan.reason, DeploymentOrphanReason::NotItsJob);
    let DeploymentSettlement::Redeployed { job } = orphan.settled else {
        panic!("{orphan:?}")
    };
    assert!(job > old_job);
    let reused = p.queue().job(old_job).await.unwrap().unwrap();
    assert_eq!(
        (reused.kind.as_str(), reused.state),
        ("cost-sample", JobState::Available),
        "the other job is left alone"
    );
}

async fn a_lost_deployment_with_a_newer_one_is_superseded_by_it(db: Db) {
    let p = Platform::new(db, true).await;
    let (a, b) = (ready_release(&p.store, 'a').await, ready_release(&p.store, 'b').await);
    let older = deploy(&p.store, a, Strategy::Rolling).await;
    let newer = deploy(&p.store, b, Strategy::Rolling).await;
    p.lose_queue_data().await;
    let pass = p.pass().await;
    assert!(pass.failed.is_empty(), "{pass:?}");
    assert_eq!(pass.orphans.len(), 2, "{pass:?}");
    assert_eq!(pass.orphans[0].deployment.id, older.id);
    assert_eq!(
        pass.orphans[0].settled,
        DeploymentSettlement::Superseded { by: newer.id }
    );
    assert!(matches!(
        pass.orphans[1].settled,
        DeploymentSettlement::Redeployed { .. }
    ));
    let older = p.store.deployment(older.id).await.unwrap();
    assert_eq!(older.status, DeploymentStatus::Superseded);
    assert!(older.finished_at.is_some());
    assert!(
        older
            .detail
            .unwrap()
            .contains(&format!("superseded by deployment {}", newer.id))
    );
    assert_eq!(
        p.store.deployment(newer.id).await.unwrap().status,
        DeploymentStatus::Pending
    );
}

/// A worker `kill -9`ed during the last attempt of the deploy job: the reaper marks it dead once
/// its lease lapses; the handler never recorded the failure.
async fn a_deployment_whose_job_died_fails_with_its_error(db: Db, separate: bool) {
    let p = Platform::new(db, separate).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    let queue = p.queue();
    for attempt in 1..=2 {
        let job = claim_deploy(queue.as_ref(), "w1", Duration::from_secs(30)).await;
        assert_eq!((job.id, job.attempt), (deployment.job_id.unwrap(), attempt));
        if attempt == 1 {
            mark_running(&p.store, &deployment).await;
        }
        let retry = Outcome::Retry {
            at: chrono::Utc::now(),
            error: "the engine did not answer".into(),
        };
        queue.acknowledge(vec![Ack::new(&job, retry)]).await.unwrap();
    }
    let last = claim_deploy(queue.as_ref(), "killed", Duration::from_millis(50)).await;
    assert_eq!(last.attempt, last.policy.max_attempts, "the last attempt");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rescued = queue.rescue_expired().await.unwrap();
    assert_eq!(rescued.dead, [last.id]);
    // The deployment is still running: nothing recorded its end.
    assert_eq!(
        p.store.deployment(deployment.id).await.unwrap().status,
        DeploymentStatus::Running
    );

    let orphan = only(&p.pass().await).clone();
    assert!(
        matches!(&orphan.reason, DeploymentOrphanReason::Ended { state: JobState::Dead, error: Some(e) }
            if e.contains("lease expired")),
        "{orphan:?}"
    );
    assert_eq!(orphan.settled, DeploymentSettlement::Failed);
    let failed = p.store.deployment(deployment.id).await.unwrap();
    assert_eq!(failed.status, DeploymentStatus::Failed);
    assert!(failed.finished_at.is_some());
    let detail = failed.detail.unwrap();
    assert!(
        detail.starts_with("its deploy job died: lease expired: worker killed stopped heartbeating")
            && detail.ends_with("; deploy again"),
        "{detail}"
    );
    let audit = p.audit("deployment.failed").await;
    assert_eq!(audit.len(), 1);
    assert!(audit[0].diff.contains("its deploy job died"), "{}", audit[0].diff);
    // Ended: later passes never look at it again.
    assert!(p.pass().await.orphans.is_empty());
}

async fn a_deployment_whose_job_was_cancelled_fails(db: Db, separate: bool) {
    let p = Platform::new(db, separate).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    p.queue().cancel(deployment.job_id.unwrap()).await.unwrap();
    let orphan = only(&p.pass().await).clone();
    assert!(
        matches!(
            orphan.reason,
            DeploymentOrphanReason::Ended {
                state: JobState::Cancelled,
                ..
            }
        ),
        "{orphan:?}"
    );
    assert_eq!(orphan.settled, DeploymentSettlement::Failed);
    let failed = p.store.deployment(deployment.id).await.unwrap();
    assert_eq!(failed.status, DeploymentStatus::Failed);
    let detail = failed.detail.unwrap();
    assert!(
        detail.starts_with("its deploy job was cancelled") && detail.ends_with("; deploy again"),
        "{detail}"
    );
}

/// A deploy job acknowledged as completed while its deployment still says running (its end was
/// never recorded): failed, saying so.
async fn a_deployment_whose_job_completed_without_it_fails(db: Db, separate: bool) {
    let p = Platform::new(db, separate).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    let job = claim_deploy(p.queue().as_ref(), "w1", Duration::from_secs(30)).await;
    mark_running(&p.store, &deployment).await;
    p.queue()
        .acknowledge(vec![Ack::new(&job, Outcome::Completed)])
        .await
        .unwrap();
    let orphan = only(&p.pass().await).clone();
    assert_eq!(
        orphan.reason,
        DeploymentOrphanReason::Ended {
            state: JobState::Completed,
            error: None
        }
    );
    let failed = p.store.deployment(deployment.id).await.unwrap();
    assert_eq!(failed.status, DeploymentStatus::Failed);
    assert!(
        failed
            .detail
            .unwrap()
            .contains("its deploy job ended (completed) without recording how the deployment ended"),
    );
}

/// A deployment whose job is waiting, running or waiting for a retry is left alone; so is one
/// changed within the grace period, whatever its job.
async fn a_deployment_with_a_live_job_or_within_the_grace_is_left_alone(db: Db, separate: bool) {
    let p = Platform::new(db, separate).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Rolling).await;
    let quiet = |pass: DeploymentPass| assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");
    quiet(p.pass().await);
    let job = claim_deploy(p.queue().as_ref(), "w1", Duration::from_secs(30)).await;
    mark_running(&p.store, &deployment).await;
    quiet(p.pass().await);
    let retry = Outcome::Retry {
        at: chrono::Utc::now() + chrono::Duration::seconds(60),
        error: "the engine did not answer".into(),
    };
    p.queue().acknowledge(vec![Ack::new(&job, retry)]).await.unwrap();
    quiet(p.pass().await);
    p.queue().cancel(job.id).await.unwrap();
    quiet(
        p.store
            .reconcile_deployments(Duration::from_secs(60), 0, 50)
            .await
            .unwrap(),
    );
    assert_eq!(
        p.store.deployment(deployment.id).await.unwrap().status,
        DeploymentStatus::Running
    );
    // Past the grace it is settled.
    assert_eq!(only(&p.pass().await).settled, DeploymentSettlement::Failed);
}

/// Service `api` deploying as a canary in steps of 10, 50 and 100%, each judged after 100 ms.
async fn canary_spec(store: &Store) {
    let deploy =
        serde_json::json!({"deploy": {"strategy": "canary", "steps": [10, 50, 100], "analysis": {"window": "100ms"}}});
    enclii_store::fixtures::apply_shop_api(store, deploy).await.unwrap();
}

async fn a_canary_whose_analysis_was_lost_is_analysed_again_once(db: Db) {
    let p = Platform::new(db, true).await;
    canary_spec(&p.store).await;
    let release = ready_release(&p.store, 'a').await;
    let deployment = deploy(&p.store, release, Strategy::Canary).await;
    // The deploy handler started the canary at 10% and moved on to 50%; the analysis of that
    // second step waits for its window.
    let job = claim_deploy(p.queue().as_ref(), "w1", Duration::from_secs(30)).await;
    p.queue()
        .acknowledge(vec![Ack::new(&job, Outcome::Completed)])
        .await
        .unwrap();
    let analysis = |step: u32| {
        let analysis = enclii_domain::jobs::CanaryAnalyze {
            deployment: deployment.id,
            step,
        };
        let key = analysis.unique_key();
        assert_eq!(key, format!("canary-analyze:{}:{step}", deployment.id));
        NewJob::typed("shop", &analysis)
            .unwrap()
            .unique_key(key)
            .run_at(chrono::Utc::now() + chrono::Duration::seconds(60))
    };
    let canary = DeploymentUpdate {
        status: DeploymentStatus::Canary,
        detail: Some("canary step 2/3: 50% of traffic".into()),
        canary_percent: Some(50),
        url: None,
    };
    p.store
        .update_deployment("system:deployer", deployment.id, &canary, Some(analysis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Overdue, but its analysis is in the queue (scheduled): nothing to do.
    let pass = p.pass().await;
    assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");

    p.lose_queue_data().await;
    let stores = [p.store.clone(), p.open().await, p.open().await];
    let reconcile = |store: Arc<Store>| async move { store.reconcile_deployments(NOW, 0, 50).await.unwrap() };
    let (a, b, c) = tokio::join!(
        reconcile(stores[0].clone()),
        reconcile(stores[1].clone()),
        reconcile(stores[2].clone())
    );
    let settled: Vec<_> = [&a, &b, &c].into_iter().flat_map(|pass| pass.orphans.iter()).collect();
    assert_eq!(settled.len(), 1, "settled once: {a:?} {b:?} {c:?}");
    assert_eq!(settled[0].reason, DeploymentOrphanReason::AnalysisLost { step: 1 });
    assert_eq!(
        settled[0].reason.to_string(),
        "the analysis of its canary step 2 was lost from the queue"
    );
    let DeploymentSettlement::Reanalyzed { job } = settled[0].settled else {
        panic!("{settled:?}")
    };
    let record = p.queue().job(job).await.unwrap().unwrap();
    assert_eq!(record.kind, "canary-analyze");
    assert_eq!(record.unique_key, Some(format!("canary-analyze:{}:1", deployment.id)));
    assert_eq!(record.payload["step"], 1);
    assert_eq!(p.audit("deployment.reanalyze").await.len(), 1);
    assert_eq!(
        p.store.deployment(deployment.id).await.unwrap().status,
        DeploymentStatus::Canary
    );

    // The analysis dies (its worker killed on the last attempt): the canary is left for an
    // operator — ending it needs the target.
    let claimed = claim(p.queue().as_ref(), "canary-analyze", "w2", Duration::from_secs(30)).await;
    assert_eq!(claimed.id, job);
    let dead = Outcome::Dead { error: "killed".into() };
    p.queue().acknowledge(vec![Ack::new(&claimed, dead)]).await.unwrap();
    let pass = p.pass().await;
    assert!(pass.orphans.is_empty() && pass.failed.is_empty(), "{pass:?}");
    assert_eq!(
        p.store.deployment(deployment.id).await.unwrap().status,
        DeploymentStatus::Canary
    );
}

mod postgres_with_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_job_was_lost_deploys_again_once() {
        super::a_deployment_whose_job_was_lost_deploys_again_once(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_id_naming_another_job_is_not_its_job() {
        super::a_job_id_naming_another_job_is_not_its_job(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_deployment_with_a_newer_one_is_superseded_by_it() {
        super::a_lost_deployment_with_a_newer_one_is_superseded_by_it(Db::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_job_died_fails_with_its_error() {
        super::a_deployment_whose_job_died_fails_with_its_error(Db::Postgres, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_job_was_cancelled_fails() {
        super::a_deployment_whose_job_was_cancelled_fails(Db::Postgres, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_with_a_live_job_or_within_the_grace_is_left_alone() {
        super::a_deployment_with_a_live_job_or_within_the_grace_is_left_alone(Db::Postgres, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_whose_analysis_was_lost_is_analysed_again_once() {
        super::a_canary_whose_analysis_was_lost_is_analysed_again_once(Db::Postgres).await
    }
}

mod sqlite_with_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_job_was_lost_deploys_again_once() {
        super::a_deployment_whose_job_was_lost_deploys_again_once(Db::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_job_died_fails_with_its_error() {
        super::a_deployment_whose_job_died_fails_with_its_error(Db::Sqlite, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_whose_analysis_was_lost_is_analysed_again_once() {
        super::a_canary_whose_analysis_was_lost_is_analysed_again_once(Db::Sqlite).await
    }
}

/// The queue in the control plane's database: no job is lost, but a job still dies, is
/// cancelled or completes without its deployment's end on every backend.
mod same_database {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_deployment_whose_job_died_fails_with_its_error() {
        super::a_deployment_whose_job_died_fails_with_its_error(Db::Postgres, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_deployment_whose_job_died_fails_with_its_error() {
        super::a_deployment_whose_job_died_fails_with_its_error(Db::Sqlite, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_deployment_whose_job_was_cancelled_fails() {
        super::a_deployment_whose_job_was_cancelled_fails(Db::Postgres, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_deployment_whose_job_was_cancelled_fails() {
        super::a_deployment_whose_job_was_cancelled_fails(Db::Sqlite, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_deployment_whose_job_completed_without_it_fails() {
        super::a_deployment_whose_job_completed_without_it_fails(Db::Postgres, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_deployment_whose_job_completed_without_it_fails() {
        super::a_deployment_whose_job_completed_without_it_fails(Db::Sqlite, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_deployment_with_a_live_job_or_within_the_grace_is_left_alone() {
        super::a_deployment_with_a_live_job_or_within_the_grace_is_left_alone(Db::Sqlite, false).await
    }
}
