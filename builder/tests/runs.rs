//! A build step works only on its run's release (issue 14's chaos run, the queue in Redis and the
//! control plane in PostgreSQL). A step claimed before the transaction that records its release
//! commits — Redis has the run a moment before — waits for it; it used to find no release and
//! complete as a no-op, so the run's later steps ran for nothing (the `push` jobs "skipped" in
//! that run) and the release was left `building`. A step whose release is not recorded at all, or
//! whose pipeline id names a release of another service or commit (an id Redis handed out again),
//! touches no release and stops its run, so no later step of it is claimed.

#[path = "../../queue/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use enclii_build::{StepRelease, release_for_step, stop_rest_of_run};
use enclii_domain::pipeline::{BuildRequest, RunSubject, build_and_deploy};
use enclii_queue::redis::RedisQueue;
use enclii_queue::{Ack, Backend, ClaimRequest, ClaimedJob, JobState, Outcome, PipelineState};
use enclii_store::{BuildTrigger, MasterKey, ReleaseStatus, ReleaseTrigger, Store, StoreConfig};
use sqlx::Connection;

struct Platform {
    store: Arc<Store>,
    queue: Arc<dyn Backend>,
    db: common::TestDatabase,
}

/// The control plane in a PostgreSQL database of its own, the queue in Redis under a prefix of
/// its own, and service `api` of project `shop`.
async fn platform() -> Platform {
    let db = common::test_database().await;
    let prefix = format!("buildruns_{:016x}", rand::random::<u64>());
    let queue: Arc<dyn Backend> = Arc::new(
        RedisQueue::connect_with_prefix(&common::redis_url(), &prefix)
            .await
            .expect("Redis must be running for the tests"),
    );
    let config = StoreConfig {
        database_url: db.url.clone(),
        queue_url: None,
        max_connections: 4,
        master_key: MasterKey::generate(),
    };
    let store = Arc::new(Store::open_with_queue(config, Some(queue.clone())).await.unwrap());
    enclii_store::fixtures::shop_api(&store).await.unwrap();
    Platform { store, queue, db }
}

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

fn push(c: char) -> BuildTrigger {
    BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: sha(c),
        branch: "main".into(),
        deploy_to: None,
        trigger: ReleaseTrigger::Push,
    }
}

/// The run a build of `service` at `commit` becomes, without a release (what Redis holds while the
/// transaction recording the release has not committed, or after it rolled back).
fn bare_run(service: &str, commit: &str) -> enclii_queue::NewPipeline {
    let mut run = build_and_deploy(&BuildRequest {
        project: "shop".into(),
        service: service.into(),
        repository: "https://github.com/org/shop".into(),
        branch: "main".into(),
        commit: commit.into(),
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        image: format!("shop/{service}:{commit}"),
        deploy_to: None,
    })
    .unwrap();
    run.unique_key = None;
    run
}

async fn claim(queue: &Arc<dyn Backend>, kind: &str) -> Vec<ClaimedJob> {
    let request = ClaimRequest {
        worker: "w1".into(),
        kinds: vec![kind.into()],
        limit: 10,
        lease: Duration::from_secs(30),
    };
    queue.claim(&request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_claimed_before_its_release_is_recorded_waits_for_it() {
    let p = platform().await;
    let (release, first) = p.store.trigger_build("webhook", &push('a')).await.unwrap();
    // A rebuild of the commit in flight: its run is in Redis, its transaction not yet committed.
    let run = p.queue.enqueue_pipeline(bare_run("api", &sha('a'))).await.unwrap();
    assert_eq!(run.superseded, vec![first.id]);
    let clone = claim(&p.queue, "clone").await.remove(0);
    assert_eq!(clone.pipeline, Some(run.id));
    let subject = RunSubject::new("api", &sha('a'));
    let (store, run_id) = (p.store.clone(), run.id);
    let step =
        tokio::spawn(async move { release_for_step(&store, run_id, &clone, &subject, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!step.is_finished(), "the step waits for its release");
    // The transaction commits: the release names the new run.
    let mut raw = sqlx::PgConnection::connect(&p.db.url).await.unwrap();
    sqlx::query("UPDATE releases SET pipeline_id = $1 WHERE id = $2")
        .bind(run.id)
        .bind(release.id)
        .execute(&mut raw)
        .await
        .unwrap();
    match step.await.unwrap().unwrap() {
        StepRelease::Work(found) => assert_eq!(found.id, release.id),
        other => panic!("the step found its release: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_run_has_no_release_touches_none_and_stops_its_run() {
    let p = platform().await;
    let run = p.queue.enqueue_pipeline(bare_run("api", &sha('b'))).await.unwrap();
    let clone = claim(&p.queue, "clone").await.remove(0);
    let subject = RunSubject::new("api", &sha('b'));
    // Past the wait (its transaction rolled back): nothing to do, and nothing for the later steps.
    let found = release_for_step(&p.store, run.id, &clone, &subject, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(found, StepRelease::Skip { stop_run: true, .. }), "{found:?}");
    stop_rest_of_run(p.queue.as_ref(), run.id, clone.id).await.unwrap();
    p.queue
        .acknowledge(vec![Ack::new(&clone, Outcome::Completed)])
        .await
        .unwrap();
    let record = p.queue.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Cancelled);
    assert!(
        record
            .steps
            .iter()
            .filter(|s| s.name != "clone")
            .all(|s| s.state == JobState::Cancelled),
        "{record:?}"
    );
    assert!(
        claim(&p.queue, "build").await.is_empty(),
        "no later step is claimed for nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_pipeline_id_names_another_release_leaves_it_alone() {
    let p = platform().await;
    let (release, _) = p.store.trigger_build("webhook", &push('a')).await.unwrap();
    let clone = claim(&p.queue, "clone").await.remove(0);
    // The same id, as a run of another service and commit would hold it after a data loss.
    let web = RunSubject::new("web", &sha('f'));
    let found = release_for_step(&p.store, clone.pipeline.unwrap(), &clone, &web, Duration::ZERO)
        .await
        .unwrap();
    match found {
        StepRelease::Skip { reason, stop_run } => {
            assert!(reason.contains("not this run's release"), "{reason}");
            assert!(stop_run);
        }
        other => panic!("{other:?}"),
    }
    let untouched = p.store.release(release.id).await.unwrap();
    assert_eq!(untouched.status, ReleaseStatus::Building);
    assert!(p.store.release_steps(release.id).await.unwrap().is_empty());
    // The run's own subject finds it.
    let api = RunSubject::new("api", &sha('a'));
    let found = release_for_step(&p.store, clone.pipeline.unwrap(), &clone, &api, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(found, StepRelease::Work(r) if r.id == release.id));
}
