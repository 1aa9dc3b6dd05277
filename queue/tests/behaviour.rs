//! One behaviour suite, run against every backend: PostgreSQL, SQLite and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enclii_queue::{
    Ack, Backend, CancelOutcome, ClaimRequest, ClaimedJob, JobFilter, JobPolicy, JobState, NewJob, NewPipeline,
    Outcome, PipelineState, PipelineStep, ProjectLimits, QueueError,
};
use serde_json::json;

fn job(kind: &str, project: &str) -> NewJob {
    NewJob::new(kind, project, json!({"n": 1}))
}

fn request(worker: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: worker.into(),
        kinds: ["noop", "a", "b", "c", "d", "e"].map(String::from).to_vec(),
        limit,
        lease: Duration::from_secs(30),
    }
}

async fn claim(q: &Arc<dyn Backend>, limit: usize) -> Vec<ClaimedJob> {
    q.claim(&request("w1", limit)).await.unwrap()
}

async fn ack(q: &Arc<dyn Backend>, job: &ClaimedJob, outcome: Outcome) {
    q.acknowledge(vec![Ack::new(job, outcome)]).await.unwrap();
}

async fn state(q: &Arc<dyn Backend>, id: i64) -> JobState {
    q.job(id).await.unwrap().expect("job exists").state
}

/// Claims until `want` jobs are in hand or `patience` runs out (promotion of due jobs is not instant).
async fn claim_eventually(q: &Arc<dyn Backend>, want: usize, patience: Duration) -> Vec<ClaimedJob> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(claim(q, want - got.len()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

async fn enqueue_claim_ack_roundtrip(q: Arc<dyn Backend>) {
    let ids = q.enqueue(vec![job("noop", "p1"), job("noop", "p1")]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0].id != ids[1].id && !ids[0].duplicate);
    let claimed = claim(&q, 10).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|j| j.attempt == 1 && j.payload == json!({"n": 1})));
    let rec = q.job(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.worker.as_deref(), Some("w1"));
    assert!(claim(&q, 10).await.is_empty(), "running jobs must not be claimed again");
    q.acknowledge(claimed.iter().map(|j| Ack::new(j, Outcome::Completed)).collect())
        .await
        .unwrap();
    for j in &claimed {
        let rec = q.job(j.id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Completed);
        assert!(rec.finished_at.is_some());
    }
}

async fn claims_only_kinds_the_worker_handles(q: Arc<dyn Backend>) {
    q.enqueue(vec![job("unknown-kind", "p"), job("noop", "p")])
        .await
        .unwrap();
    let claimed = claim(&q, 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].kind, "noop");
}

async fn unique_keys_give_one_job(q: Arc<dyn Backend>) {
    let first = q
        .enqueue(vec![job("noop", "p").unique_key("delivery-1")])
        .await
        .unwrap();
    let again = q
        .enqueue(vec![
            job("noop", "p").unique_key("delivery-1"),
            job("noop", "p").unique_key("delivery-2"),
        ])
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert_eq!(again[0].id, first[0].id);
    assert!(again[0].duplicate);
    assert!(!again[1].duplicate);
    assert_eq!(claim(&q, 10).await.len(), 2);
}

async fn a_key_repeated_within_one_batch_gives_one_job(q: Arc<dyn Backend>) {
    let out = q
        .enqueue(vec![
            job("noop", "p").unique_key("k"),
            job("noop", "p"),
            job("noop", "p").unique_key("k"),
        ])
        .await
        .unwrap();
    assert!(!out[0].duplicate && !out[1].duplicate);
    assert_eq!((out[2].id, out[2].duplicate), (out[0].id, true));
    assert_eq!(claim(&q, 10).await.len(), 2);
}

async fn a_step_whose_unique_key_is_taken_rejects_the_whole_pipeline(q: Arc<dyn Backend>) {
    q.enqueue(vec![job("a", "proj").unique_key("taken")]).await.unwrap();
    let mut p = diamond(None);
    p.steps[2].job = p.steps[2].job.clone().unique_key("taken");
    let err = q.enqueue_pipeline(p).await.unwrap_err();
    assert!(matches!(err, QueueError::InvalidPipeline(_)), "{err}");
    assert!(err.to_string().contains("step `c`"), "{err}");
    let claimed = claim(&q, 10).await;
    assert_eq!(
        claimed.len(),
        1,
        "only the first job exists; nothing of the pipeline was written"
    );
    assert_eq!(claimed[0].pipeline, None);
}

async fn higher_priority_runs_first(q: Arc<dyn Backend>) {
    q.enqueue(vec![job("noop", "p").with_priority(9)]).await.unwrap();
    let urgent = q.enqueue(vec![job("noop", "p").with_priority(0)]).await.unwrap();
    let claimed = claim(&q, 1).await;
    assert_eq!(claimed[0].id, urgent[0].id);
}

async fn delayed_jobs_wait_for_run_at(q: Arc<dyn Backend>) {
    let at = Utc::now() + chrono::Duration::milliseconds(1500);
    let ids = q.enqueue(vec![job("noop", "p").run_at(at)]).await.unwrap();
    assert_eq!(state(&q, ids[0].id).await, JobState::Scheduled);
    assert!(claim(&q, 10).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1550)).await;
    let claimed = claim_eventually(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(claimed.len(), 1);
    assert!(Utc::now() >= at);
}

async fn retries_back_off_then_die_and_can_be_retried(q: Arc<dyn Backend>) {
    let policy = JobPolicy {
        max_attempts: 2,
        ..JobPolicy::default()
    };
    let id = q.enqueue(vec![job("noop", "p").with_policy(policy)]).await.unwrap()[0].id;
    let first = claim(&q, 1).await.remove(0);
    let retry_at = Utc::now() + chrono::Duration::milliseconds(1500);
    ack(
        &q,
        &first,
        Outcome::Retry {
            at: retry_at,
            error: "boom".into(),
        },
    )
    .await;
    let rec = q.job(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    assert_eq!(rec.last_error.as_deref(), Some("boom"));
    assert!(
        (rec.run_at - retry_at).num_milliseconds().abs() < 5,
        "the retry time is stored"
    );
    assert!(claim(&q, 1).await.is_empty(), "not before the backoff passes");
    tokio::time::sleep(Duration::from_millis(1550)).await;
    let second = claim_eventually(&q, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(second.attempt, 2);
    let outcome = Outcome::failure(second.attempt, &second.policy, "boom again".into(), Utc::now());
    assert!(matches!(outcome, Outcome::Dead { .. }));
    ack(&q, &second, outcome).await;
    assert_eq!(state(&q, id).await, JobState::Dead);
    assert!(claim(&q, 1).await.is_empty());
    q.retry(id).await.unwrap();
    let third = claim(&q, 1).await.remove(0);
    assert_eq!(
        (third.id, third.attempt),
        (id, 1),
        "an operator retry starts a fresh set of attempts"
    );
    assert!(matches!(q.retry(id).await, Err(QueueError::NotRetryable { .. })));
    assert!(matches!(q.retry(999_999).await, Err(QueueError::JobNotFound(_))));
}

async fn expired_leases_are_rescued_and_stale_acks_ignored(q: Arc<dyn Backend>) {
    let policy = JobPolicy {
        backoff: enclii_queue::Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
        ..JobPolicy::default()
    };
    let id = q.enqueue(vec![job("noop", "p").with_policy(policy)]).await.unwrap()[0].id;
    let mut req = request("dying-worker", 1);
    req.lease = Duration::from_millis(200);
    let stale = q.claim(&req).await.unwrap().remove(0);
    assert!(
        q.rescue_expired().await.unwrap().retried.is_empty(),
        "a live lease is not rescued"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = q.rescue_expired().await.unwrap();
    assert_eq!(report.retried, vec![id]);
    let rec = q.job(id).await.unwrap().unwrap();
    assert!(rec.last_error.unwrap().contains("lease expired"));
    let fresh = claim_eventually(&q, 1, Duration::from_secs(3)).await.remove(0);
    assert_eq!(fresh.attempt, 2);
    // The dead worker's late ack and heartbeat change nothing.
    ack(&q, &stale, Outcome::Completed).await;
    assert_eq!(state(&q, id).await, JobState::Running);
    let hb = q
        .heartbeat("dying-worker", &[stale.lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![id]);
    ack(&q, &fresh, Outcome::Completed).await;
    assert_eq!(state(&q, id).await, JobState::Completed);
}

async fn heartbeats_keep_a_long_job_leased(q: Arc<dyn Backend>) {
    q.enqueue(vec![job("noop", "p")]).await.unwrap();
    let mut req = request("w-long", 1);
    req.lease = Duration::from_millis(1500);
    let j = q.claim(&req).await.unwrap().remove(0);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hb = q.heartbeat("w-long", &[j.lease()], req.lease).await.unwrap();
        assert!(hb.lost.is_empty());
        let report = q.rescue_expired().await.unwrap();
        assert!(
            report.retried.is_empty() && report.dead.is_empty(),
            "a heartbeating job is never rescued"
        );
    }
    let other = q.heartbeat("someone-else", &[j.lease()], req.lease).await.unwrap();
    assert_eq!(other.lost, vec![j.id], "only the lease holder can renew");
}

async fn cancel_queued_and_running_jobs(q: Arc<dyn Backend>) {
    let ids = q.enqueue(vec![job("noop", "p"), job("noop", "p")]).await.unwrap();
    assert_eq!(q.cancel(ids[0].id).await.unwrap(), CancelOutcome::Cancelled);
    let running = claim(&q, 10).await;
    assert_eq!(running.len(), 1, "a cancelled job is never claimed");
    assert_eq!(running[0].id, ids[1].id);
    assert_eq!(q.cancel(ids[1].id).await.unwrap(), CancelOutcome::Requested);
    let hb = q
        .heartbeat("w1", &[running[0].lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.cancel, vec![ids[1].id]);
    ack(
        &q,
        &running[0],
        Outcome::Cancelled {
            reason: "stopped".into(),
        },
    )
    .await;
    assert_eq!(state(&q, ids[1].id).await, JobState::Cancelled);
    assert_eq!(
        q.cancel(ids[1].id).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    assert!(matches!(q.cancel(424_242).await, Err(QueueError::JobNotFound(_))));
}

async fn released_jobs_are_available_without_spending_an_attempt(q: Arc<dyn Backend>) {
    let id = q.enqueue(vec![job("noop", "p")]).await.unwrap()[0].id;
    let j = claim(&q, 1).await.remove(0);
    ack(&q, &j, Outcome::Released).await;
    let rec = q.job(id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Available, 0));
    assert_eq!(claim(&q, 1).await[0].attempt, 1);
}

async fn concurrency_cap_holds_across_workers(q: Arc<dyn Backend>) {
    q.set_project_limits(
        "capped",
        ProjectLimits {
            max_running: Some(3),
            jobs_per_minute: None,
        },
    )
    .await
    .unwrap();
    q.enqueue((0..10).map(|_| job("noop", "capped")).collect())
        .await
        .unwrap();
    let (ra, rb) = (request("wa", 10), request("wb", 10));
    let (a, b) = tokio::join!(q.claim(&ra), q.claim(&rb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 3, "never more than the cap running");
    assert!(claim(&q, 10).await.is_empty());
    let done = a.first().or(b.first()).unwrap();
    ack(&q, done, Outcome::Completed).await;
    assert_eq!(claim(&q, 10).await.len(), 1, "a finished job frees one slot");
}

async fn rate_limit_holds_back_a_project(q: Arc<dyn Backend>) {
    q.set_project_limits(
        "limited",
        ProjectLimits {
            max_running: None,
            jobs_per_minute: Some(5),
        },
    )
    .await
    .unwrap();
    q.enqueue((0..10).map(|_| job("noop", "limited")).collect())
        .await
        .unwrap();
    q.enqueue((0..3).map(|_| job("noop", "free")).collect()).await.unwrap();
    let claimed = claim(&q, 20).await;
    let limited = claimed.iter().filter(|j| j.project == "limited").count();
    assert_eq!(limited, 5, "one minute's burst");
    assert_eq!(claimed.len() - limited, 3, "other projects are not held back");
    assert!(claim(&q, 20).await.is_empty());
}

async fn claims_share_fairly_between_projects(q: Arc<dyn Backend>) {
    q.enqueue((0..300).map(|_| job("noop", "big")).collect()).await.unwrap();
    q.enqueue((0..10).map(|_| job("noop", "small")).collect())
        .await
        .unwrap();
    let claimed = claim(&q, 20).await;
    let small = claimed.iter().filter(|j| j.project == "small").count();
    assert_eq!(claimed.len(), 20);
    assert_eq!(small, 10, "the small project gets its fair half despite arriving last");
}

fn step(name: &str, needs: &[&str]) -> PipelineStep {
    PipelineStep {
        name: name.into(),
        job: job(name, "proj"),
        needs: needs.iter().map(|s| s.to_string()).collect(),
    }
}

fn diamond(supersede: Option<&str>) -> NewPipeline {
    // a → (b ∥ c) → d → e: fan-out, then fan-in.
    NewPipeline {
        project: "proj".into(),
        name: "build-and-deploy".into(),
        supersede_key: supersede.map(String::from),
        unique_key: None,
        steps: vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
            step("e", &["d"]),
        ],
    }
}

/// Enqueues the diamond, completes `a`, and claims the parallel steps `b` and `c`.
async fn diamond_with_b_and_c_running(
    q: &Arc<dyn Backend>,
) -> (enclii_queue::PipelineEnqueued, ClaimedJob, ClaimedJob) {
    let run = q.enqueue_pipeline(diamond(None)).await.unwrap();
    let a = claim(q, 10).await;
    ack(q, &a[0], Outcome::Completed).await;
    let mut bc = claim_eventually(q, 2, Duration::from_secs(2)).await;
    bc.sort_by_key(|j| j.step.clone());
    let c = bc.pop().unwrap();
    let b = bc.pop().unwrap();
    (run, b, c)
}

async fn pipelines_fan_out_and_fan_in(q: Arc<dyn Backend>) {
    let run = q.enqueue_pipeline(diamond(None)).await.unwrap();
    let steps = |names: &[ClaimedJob]| {
        let mut v: Vec<String> = names.iter().map(|j| j.step.clone().unwrap()).collect();
        v.sort();
        v
    };
    let a = claim(&q, 10).await;
    assert_eq!(steps(&a), ["a"]);
    ack(&q, &a[0], Outcome::Completed).await;
    let bc = claim_eventually(&q, 2, Duration::from_secs(2)).await;
    assert_eq!(steps(&bc), ["b", "c"], "fan-out: both run in parallel");
    ack(&q, &bc[0], Outcome::Completed).await;
    assert!(claim(&q, 10).await.is_empty(), "fan-in: d waits for both b and c");
    ack(&q, &bc[1], Outcome::Completed).await;
    let d = claim_eventually(&q, 1, Duration::from_secs(2)).await;
    assert_eq!(steps(&d), ["d"]);
    ack(&q, &d[0], Outcome::Completed).await;
    let e = claim_eventually(&q, 1, Duration::from_secs(2)).await;
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    assert_eq!(record.steps.len(), 5);
    ack(&q, &e[0], Outcome::Completed).await;
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Succeeded);
    assert!(record.steps.iter().all(|s| s.state == JobState::Completed));
    assert!(record.finished_at.is_some());
}

async fn a_failed_step_fails_the_run_and_retry_resumes_it(q: Arc<dyn Backend>) {
    let (run, b, c) = diamond_with_b_and_c_running(&q).await;
    let (b, c) = (&b, &c);
    ack(
        &q,
        b,
        Outcome::Dead {
            error: "build failed at Dockerfile:7".into(),
        },
    )
    .await;
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Failed);
    let by_name = |name: &str| record.steps.iter().find(|s| s.name == name).unwrap().clone();
    assert_eq!(by_name("d").state, JobState::Cancelled);
    assert_eq!(by_name("e").state, JobState::Cancelled);
    let hb = q.heartbeat("w1", &[c.lease()], Duration::from_secs(30)).await.unwrap();
    assert_eq!(hb.cancel, vec![c.id], "the sibling still running is asked to stop");
    ack(&q, c, Outcome::Completed).await;
    // An operator retries the dead step: the run reopens and the rest waits again.
    q.retry(b.id).await.unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    assert_eq!(
        record.steps.iter().find(|s| s.name == "d").unwrap().state,
        JobState::Pending
    );
    let b2 = claim(&q, 10).await;
    assert_eq!(b2.len(), 1);
    ack(&q, &b2[0], Outcome::Completed).await;
    let d = claim_eventually(&q, 1, Duration::from_secs(2)).await;
    assert_eq!(d[0].step.as_deref(), Some("d"));
}

async fn a_newer_pipeline_supersedes_the_older(q: Arc<dyn Backend>) {
    let old = q.enqueue_pipeline(diamond(Some("svc:api:branch:main"))).await.unwrap();
    let a = claim(&q, 10).await;
    let new = q.enqueue_pipeline(diamond(Some("svc:api:branch:main"))).await.unwrap();
    assert_eq!(new.superseded, vec![old.id]);
    let record = q.pipeline(old.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Superseded);
    assert!(
        record
            .steps
            .iter()
            .filter(|s| s.name != "a")
            .all(|s| s.state == JobState::Cancelled)
    );
    let hb = q
        .heartbeat("w1", &[a[0].lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.cancel, vec![a[0].id], "the old run's running step is cancelled");
    let claimed = claim(&q, 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].pipeline, Some(new.id));
    let other = q.enqueue_pipeline(diamond(Some("svc:api:branch:dev"))).await.unwrap();
    assert!(other.superseded.is_empty(), "another branch is not superseded");
}

/// A step still running when its run is superseded may finish afterwards (its worker had not yet
/// heard of the cancel): its completion must not release the superseded run's later steps, which
/// stay cancelled, whether it completes, fails or is handed back, and wherever the run stood
/// (before a fan-out, inside it).
async fn a_superseded_runs_step_finishing_late_releases_nothing(q: Arc<dyn Backend>) {
    let key = Some("svc:late:branch:main");
    let old = q.enqueue_pipeline(diamond(key)).await.unwrap();
    let a = claim(&q, 10).await.remove(0);
    let new = q.enqueue_pipeline(diamond(key)).await.unwrap();
    ack(&q, &a, Outcome::Completed).await;
    let record = q.pipeline(old.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Superseded);
    for s in record.steps.iter().filter(|s| s.name != "a") {
        assert_eq!(s.state, JobState::Cancelled, "step `{}` of the superseded run", s.name);
    }
    // Only the new run's first step is claimable.
    let next = claim_eventually(&q, 2, Duration::from_millis(500)).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!((next[0].pipeline, next[0].step.as_deref()), (Some(new.id), Some("a")));

    // Inside a fan-out: `b` completes and `c` fails after the run was superseded.
    ack(&q, &next[0], Outcome::Completed).await;
    let mut bc = claim_eventually(&q, 2, Duration::from_secs(2)).await;
    bc.sort_by_key(|j| j.step.clone());
    let newer = q.enqueue_pipeline(diamond(key)).await.unwrap();
    assert_eq!(newer.superseded, vec![new.id]);
    ack(&q, &bc[0], Outcome::Completed).await;
    let policy = JobPolicy::default();
    ack(&q, &bc[1], Outcome::failure(1, &policy, "flaky".into(), Utc::now())).await;
    let record = q.pipeline(new.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Superseded);
    let by_name = |name: &str| record.steps.iter().find(|s| s.name == name).unwrap().state;
    assert_eq!(by_name("b"), JobState::Completed);
    assert_eq!(
        by_name("c"),
        JobState::Cancelled,
        "a retry of a superseded step is cancelled"
    );
    assert_eq!(by_name("d"), JobState::Cancelled);
    assert_eq!(by_name("e"), JobState::Cancelled);
    let next = claim_eventually(&q, 3, Duration::from_millis(500)).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!((next[0].pipeline, next[0].step.as_deref()), (Some(newer.id), Some("a")));
}

async fn pipeline_unique_key_gives_one_run(q: Arc<dyn Backend>) {
    let mut p = diamond(None);
    p.unique_key = Some("gh-delivery-42".into());
    let first = q.enqueue_pipeline(p.clone()).await.unwrap();
    let second = q.enqueue_pipeline(p).await.unwrap();
    assert_eq!(first.id, second.id);
    assert!(second.duplicate && !first.duplicate);
    assert_eq!(claim(&q, 10).await.len(), 1);
}

async fn invalid_input_is_rejected_with_the_field(q: Arc<dyn Backend>) {
    let err = q.enqueue(vec![job("", "p")]).await.unwrap_err();
    assert!(err.to_string().contains("`kind`"), "{err}");
    let mut cyclic = diamond(None);
    cyclic.steps[0].needs = vec!["e".into()];
    let err = q.enqueue_pipeline(cyclic).await.unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    assert!(claim(&q, 10).await.is_empty(), "nothing half-enqueued");
}

async fn finished_jobs_are_pruned_after_retention(q: Arc<dyn Backend>) {
    let ids = q.enqueue(vec![job("noop", "p"), job("noop", "p")]).await.unwrap();
    let claimed = claim(&q, 2).await;
    ack(&q, &claimed[0], Outcome::Completed).await;
    assert_eq!(
        q.prune(Utc::now() - chrono::Duration::hours(1)).await.unwrap(),
        0,
        "within retention"
    );
    let pruned = q.prune(Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(pruned, 1);
    assert!(q.job(claimed[0].id).await.unwrap().is_none());
    assert!(q.job(claimed[1].id).await.unwrap().is_some(), "running jobs are kept");
    assert_eq!(ids.len(), 2);
}

async fn stats_count_depth_by_kind_project_and_state(q: Arc<dyn Backend>) {
    q.enqueue(vec![job("a", "p1"), job("a", "p1"), job("b", "p2")])
        .await
        .unwrap();
    let claimed = claim(&q, 1).await;
    assert_eq!(claimed.len(), 1);
    let stats = q.stats().await.unwrap();
    let count = |kind: &str, project: &str, state: JobState| {
        stats
            .depth
            .iter()
            .find(|r| r.kind == kind && r.project == project && r.state == state)
            .map_or(0, |r| r.count)
    };
    let total_available = count("a", "p1", JobState::Available) + count("b", "p2", JobState::Available);
    assert_eq!(total_available, 2);
    assert_eq!(
        count("a", "p1", JobState::Running) + count("b", "p2", JobState::Running),
        1
    );
    assert!(!stats.oldest_available_seconds.is_empty());
}

async fn leases_are_exclusive_under_concurrent_claims(q: Arc<dyn Backend>) {
    q.enqueue((0..400).map(|i| job("noop", &format!("p{}", i % 4))).collect())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q.claim(&request(&format!("w{w}"), 16)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.iter().map(|j| j.id));
                q.acknowledge(got.iter().map(|j| Ack::new(j, Outcome::Completed)).collect())
                    .await
                    .unwrap();
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(total, 400, "no job claimed twice");
    assert_eq!(all.len(), 400, "no job lost");
}

async fn an_old_lease_cannot_touch_a_newer_claim(q: Arc<dyn Backend>) {
    // Handed back, then claimed again: same attempt number, different claim.
    let id = q.enqueue(vec![job("noop", "p")]).await.unwrap()[0].id;
    let first = claim(&q, 1).await.remove(0);
    ack(&q, &first, Outcome::Released).await;
    let second = claim(&q, 1).await.remove(0);
    assert_eq!(first.attempt, second.attempt);
    assert_ne!(first.lease(), second.lease());
    ack(&q, &first, Outcome::Completed).await;
    assert_eq!(state(&q, id).await, JobState::Running, "the old claim's ack is ignored");
    let hb = q
        .heartbeat("w1", &[first.lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![id]);
    // Dead, retried by an operator, claimed again: attempt restarts, the old claim stays dead.
    let policy = JobPolicy {
        max_attempts: 1,
        ..JobPolicy::default()
    };
    let id = q.enqueue(vec![job("noop", "p").with_policy(policy)]).await.unwrap()[0].id;
    let before = claim(&q, 1).await.remove(0);
    ack(&q, &before, Outcome::Dead { error: "x".into() }).await;
    q.retry(id).await.unwrap();
    let after = claim(&q, 1).await.remove(0);
    assert_eq!(before.attempt, after.attempt);
    ack(&q, &before, Outcome::Completed).await;
    assert_eq!(state(&q, id).await, JobState::Running);
    ack(&q, &after, Outcome::Completed).await;
    assert_eq!(state(&q, id).await, JobState::Completed);
}

async fn a_requested_cancel_survives_failure_hand_back_and_crash(q: Arc<dyn Backend>) {
    let policy = JobPolicy {
        backoff: enclii_queue::Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
        ..JobPolicy::default()
    };
    let ids = q
        .enqueue(vec![
            job("noop", "p").with_policy(policy),
            job("noop", "p").with_policy(policy),
            job("noop", "p").with_policy(policy),
        ])
        .await
        .unwrap();
    let mut req = request("w-cancel", 3);
    req.lease = Duration::from_millis(300);
    let running = q.claim(&req).await.unwrap();
    for e in &ids {
        assert_eq!(q.cancel(e.id).await.unwrap(), CancelOutcome::Requested);
    }
    let by_id = |id: i64| running.iter().find(|j| j.id == id).unwrap();
    ack(
        &q,
        by_id(ids[0].id),
        Outcome::failure(1, &policy, "flaky".into(), Utc::now()),
    )
    .await;
    ack(&q, by_id(ids[1].id), Outcome::Released).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    q.rescue_expired().await.unwrap();
    for e in &ids {
        assert_eq!(
            state(&q, e.id).await,
            JobState::Cancelled,
            "job {} ran again after a cancel",
            e.id
        );
    }
    assert!(claim_eventually(&q, 1, Duration::from_millis(300)).await.is_empty());
}

async fn retry_respects_needs_and_refuses_superseded_runs(q: Arc<dyn Backend>) {
    let run = q.enqueue_pipeline(diamond(None)).await.unwrap();
    let a = claim(&q, 10).await.remove(0);
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    let id_of = |name: &str| record.steps.iter().find(|s| s.name == name).unwrap().job;
    // Cancelling a waiting step cancels the run while `a` still runs.
    assert_eq!(q.cancel(id_of("b")).await.unwrap(), CancelOutcome::Cancelled);
    ack(
        &q,
        &a,
        Outcome::Cancelled {
            reason: "stopped".into(),
        },
    )
    .await;
    assert_eq!(
        q.pipeline(run.id).await.unwrap().unwrap().state,
        PipelineState::Cancelled
    );
    // Retrying `d` reopens the run, but `d` still waits for `b` and `c`, which wait for `a`.
    q.retry(id_of("d")).await.unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    assert_eq!(
        record.steps.iter().find(|s| s.name == "d").unwrap().state,
        JobState::Pending
    );
    let next = claim(&q, 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].step.as_deref(), Some("a"));
    // A superseded run stays superseded.
    let old = q.enqueue_pipeline(diamond(Some("svc:web:branch:main"))).await.unwrap();
    q.enqueue_pipeline(diamond(Some("svc:web:branch:main"))).await.unwrap();
    let old_a = q.pipeline(old.id).await.unwrap().unwrap().steps[0].job;
    let err = q.retry(old_a).await.unwrap_err();
    assert!(matches!(err, QueueError::SupersededPipeline { .. }), "{err}");
}

async fn pruning_keeps_a_pipelines_steps_together(q: Arc<dyn Backend>) {
    let (run, b, c) = diamond_with_b_and_c_running(&q).await;
    let (b, c) = (&b, &c);
    ack(&q, b, Outcome::Dead { error: "failed".into() }).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ack(
        &q,
        c,
        Outcome::Cancelled {
            reason: "stopped".into(),
        },
    )
    .await;
    assert_eq!(
        q.prune(cutoff).await.unwrap(),
        0,
        "one step finished after the cutoff: keep the whole run"
    );
    assert_eq!(q.pipeline(run.id).await.unwrap().unwrap().steps.len(), 5);
    assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 5);
    assert!(
        q.pipeline(run.id).await.unwrap().is_none(),
        "then the run and all its steps go"
    );
}

async fn operators_list_jobs_by_state_kind_project_and_finish_time(q: Arc<dyn Backend>) {
    let before = Utc::now() - chrono::Duration::seconds(1);
    let ids = q
        .enqueue(vec![job("a", "p1"), job("a", "p2"), job("b", "p1"), job("b", "p1")])
        .await
        .unwrap();
    let claimed = claim(&q, 3).await;
    assert_eq!(claimed.len(), 3);
    let by_id = |id: i64| claimed.iter().find(|j| j.id == id).cloned();
    // Claims are fair between projects, so which three were claimed varies: finish what came.
    let mut dead = Vec::new();
    for (i, j) in claimed.iter().enumerate() {
        if i == 0 {
            ack(&q, j, Outcome::Completed).await;
        } else {
            ack(&q, j, Outcome::Dead { error: "boom".into() }).await;
            dead.push(j.id);
        }
    }
    let list = |filter: JobFilter| {
        let q = q.clone();
        async move { q.list_jobs(&filter).await.unwrap() }
    };
    let dead_listed = list(JobFilter {
        states: vec![JobState::Dead],
        limit: 10,
        ..Default::default()
    })
    .await;
    dead.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        dead_listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        dead,
        "dead jobs, newest first"
    );
    assert!(dead_listed.iter().all(|j| j.last_error.as_deref() == Some("boom")));
    let all = list(JobFilter {
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 4);
    let p1_b = list(JobFilter {
        kind: Some("b".into()),
        project: Some("p1".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(
        p1_b.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[3].id, ids[2].id]
    );
    let finished = list(JobFilter {
        finished_after: Some(before),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(finished.len(), 3, "the unclaimed job has not finished");
    assert!(finished.iter().all(|j| by_id(j.id).is_some()));
    let later = list(JobFilter {
        finished_after: Some(Utc::now() + chrono::Duration::seconds(5)),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert!(later.is_empty());
    let one = list(JobFilter {
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(one[0].id, ids[3].id, "the limit keeps the newest");
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (queue, _database) = super::common::postgres().await;
                super::$test(queue).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::sqlite().await).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::redis().await).await })*
        }
    };
}

on_every_backend!(
    enqueue_claim_ack_roundtrip,
    operators_list_jobs_by_state_kind_project_and_finish_time,
    claims_only_kinds_the_worker_handles,
    unique_keys_give_one_job,
    a_key_repeated_within_one_batch_gives_one_job,
    a_step_whose_unique_key_is_taken_rejects_the_whole_pipeline,
    higher_priority_runs_first,
    delayed_jobs_wait_for_run_at,
    retries_back_off_then_die_and_can_be_retried,
    expired_leases_are_rescued_and_stale_acks_ignored,
    heartbeats_keep_a_long_job_leased,
    cancel_queued_and_running_jobs,
    released_jobs_are_available_without_spending_an_attempt,
    concurrency_cap_holds_across_workers,
    rate_limit_holds_back_a_project,
    claims_share_fairly_between_projects,
    pipelines_fan_out_and_fan_in,
    a_failed_step_fails_the_run_and_retry_resumes_it,
    a_newer_pipeline_supersedes_the_older,
    a_superseded_runs_step_finishing_late_releases_nothing,
    pipeline_unique_key_gives_one_run,
    invalid_input_is_rejected_with_the_field,
    finished_jobs_are_pruned_after_retention,
    stats_count_depth_by_kind_project_and_state,
    leases_are_exclusive_under_concurrent_claims,
    an_old_lease_cannot_touch_a_newer_claim,
    a_requested_cancel_survives_failure_hand_back_and_crash,
    retry_respects_needs_and_refuses_superseded_runs,
    pruning_keeps_a_pipelines_steps_together,
);
