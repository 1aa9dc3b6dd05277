//! Leases: heartbeats, cancellation, hand-backs, stale tokens, the reaper.

use super::*;

#[tokio::test]
async fn heartbeat_reports_lost_after_rescue() {
    let q = queue().await;
    let id = q
        .enqueue(vec![NewJob::new("k", "p", json!({})).with_policy(JobPolicy {
            max_attempts: 2,
            ..JobPolicy::default()
        })])
        .await
        .unwrap()[0]
        .id;
    let mut req = request(&["k"], 1);
    req.lease = Duration::from_millis(50);
    let job = q.claim(&req).await.unwrap().remove(0);
    let hb = q
        .heartbeat("w1", &[job.lease()], Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(hb, HeartbeatReply::default());
    let other = q
        .heartbeat("w2", &[job.lease()], Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(other.lost, vec![id]);
    assert!(q.rescue_expired().await.unwrap().retried.is_empty(), "lease still live");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let report = q.rescue_expired().await.unwrap();
    assert_eq!(report.retried, vec![id]);
    let hb = q
        .heartbeat("w1", &[job.lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![id]);
    // The stale lease cannot finish the job.
    complete(&q, std::slice::from_ref(&job)).await;
    let record = q.job(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Scheduled);
    assert!(record.last_error.unwrap().contains("lease expired"));
    assert_eq!(q.stats().await.unwrap().depth.len(), 1);
    cleanup(&q).await;
}

#[tokio::test]
async fn cancel_scheduled_and_running() {
    let q = queue().await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let ids: Vec<JobId> = q
        .enqueue(vec![
            NewJob::new("k", "p", json!(1)).run_at(later),
            NewJob::new("k", "p", json!(2)),
        ])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(q.job(ids[0]).await.unwrap().unwrap().state, JobState::Scheduled);
    let running = q.claim(&request(&["k"], 10)).await.unwrap();
    assert_eq!(running.len(), 1, "the delayed job is not due");
    assert_eq!(q.cancel(ids[0]).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(q.cancel(ids[1]).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(
        q.cancel(ids[0]).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    assert!(matches!(q.cancel(123_456_789).await, Err(QueueError::JobNotFound(_))));
    assert!(q.job(ids[1]).await.unwrap().unwrap().cancel_requested);
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "k", "p", JobState::Scheduled), 0);
    assert_eq!(count(&stats, "k", "p", JobState::Running), 1);
    cleanup(&q).await;
}

#[tokio::test]
async fn released_jobs_return_without_spending_an_attempt() {
    let q = queue().await;
    let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
    let job = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
    q.acknowledge(vec![Ack::new(&job, Outcome::Released)]).await.unwrap();
    let record = q.job(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Available, 0));
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "k", "p", JobState::Available), 1);
    assert_eq!(count(&stats, "k", "p", JobState::Running), 0);
    assert_eq!(q.claim(&request(&["k"], 1)).await.unwrap()[0].attempt, 1);
    cleanup(&q).await;
}

#[tokio::test]
async fn stale_tokens_cannot_ack_or_heartbeat_after_release_or_retry() {
    let q = queue().await;
    let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
    let first = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
    assert_eq!((first.attempt, first.lease_token), (1, 1));
    q.acknowledge(vec![Ack::new(&first, Outcome::Released)]).await.unwrap();
    // Same attempt number again, but a new token.
    let second = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
    assert_eq!((second.attempt, second.lease_token), (1, 2));
    let hb = q
        .heartbeat("w1", &[first.lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![id]);
    q.acknowledge(vec![Ack::new(&first, Outcome::Dead { error: "stale".into() })])
        .await
        .unwrap();
    assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Running);
    let hb = q
        .heartbeat("w1", &[second.lease()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb, HeartbeatReply::default());
    q.acknowledge(vec![Ack::new(&second, Outcome::Dead { error: "bad".into() })])
        .await
        .unwrap();

    // An operator's retry resets the attempt, never the token.
    q.retry(id).await.unwrap();
    let third = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
    assert_eq!((third.attempt, third.lease_token), (1, 3));
    for stale in [&first, &second] {
        let hb = q
            .heartbeat("w1", &[stale.lease()], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(hb.lost, vec![id]);
        complete(&q, std::slice::from_ref(stale)).await;
        assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Running);
    }
    complete(&q, std::slice::from_ref(&third)).await;
    assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Completed);
    assert!(q.stats().await.unwrap().depth.is_empty());
    cleanup(&q).await;
}

#[tokio::test]
async fn requested_cancellation_wins_over_retry_and_release() {
    let q = queue().await;
    let run = q
        .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"]), step("c", &[])], None))
        .await
        .unwrap();
    let got = q.claim(&request(&["a", "c"], 10)).await.unwrap();
    assert_eq!(got.len(), 2);
    let a = got.iter().find(|j| j.kind == "a").unwrap();
    let c = got.iter().find(|j| j.kind == "c").unwrap();
    assert_eq!(q.cancel(a.id).await.unwrap(), CancelOutcome::Requested);
    // The worker's attempt failed (or it ignored the request): retried, it would run again.
    q.acknowledge(vec![Ack::new(
        a,
        Outcome::Retry {
            at: Utc::now(),
            error: "boom".into(),
        },
    )])
    .await
    .unwrap();
    let record = q.job(a.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.last_error.as_deref(), Some("cancelled while running"));
    assert!(record.finished_at.is_some());
    assert!(!record.cancel_requested);
    let run_record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(run_record.state, PipelineState::Cancelled);
    assert_eq!(state_of(&run_record, "b"), JobState::Cancelled);
    // c is still running: asked to stop; its hand-back ends it cancelled too.
    let hb = q.heartbeat("w1", &[c.lease()], Duration::from_secs(30)).await.unwrap();
    assert_eq!(hb.cancel, vec![c.id]);
    q.acknowledge(vec![Ack::new(c, Outcome::Released)]).await.unwrap();
    let record = q.job(c.id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Cancelled, 1));
    assert!(q.claim(&request(&["a", "b", "c"], 10)).await.unwrap().is_empty());
    assert!(q.stats().await.unwrap().depth.is_empty());

    // A plain job handed back (ack not naming a pipeline either way) is cancelled as well.
    let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
    let job = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
    assert_eq!(q.cancel(id).await.unwrap(), CancelOutcome::Requested);
    q.acknowledge(vec![Ack::new(&job, Outcome::Released)]).await.unwrap();
    assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Cancelled);
    assert!(q.claim(&request(&["k"], 1)).await.unwrap().is_empty());
    assert!(q.stats().await.unwrap().depth.is_empty());
    cleanup(&q).await;
}

#[tokio::test]
async fn requested_cancellation_wins_over_the_reaper() {
    let q = queue().await;
    let run = q
        .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"])], None))
        .await
        .unwrap();
    let mut req = request(&["a"], 1);
    req.lease = Duration::from_millis(50);
    let a = q.claim(&req).await.unwrap().remove(0);
    assert_eq!(q.cancel(a.id).await.unwrap(), CancelOutcome::Requested);
    tokio::time::sleep(Duration::from_millis(120)).await;
    q.rescue_expired().await.unwrap();
    let record = q.job(a.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.last_error.as_deref(), Some("cancelled while running"));
    let run_record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(run_record.state, PipelineState::Cancelled);
    assert_eq!(state_of(&run_record, "b"), JobState::Cancelled);
    assert!(q.claim(&request(&["a", "b"], 10)).await.unwrap().is_empty());
    assert!(q.stats().await.unwrap().depth.is_empty());
    // The late worker cannot bring it back.
    complete(&q, std::slice::from_ref(&a)).await;
    assert_eq!(q.job(a.id).await.unwrap().unwrap().state, JobState::Cancelled);
    cleanup(&q).await;
}
