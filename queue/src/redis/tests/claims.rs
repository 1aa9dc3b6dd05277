//! Enqueue and claim: order, unique keys, caps, the fair split, token buckets, wake-ups.

use super::*;

#[tokio::test]
async fn enqueue_claim_ack() {
    let q = queue().await;
    q.ping().await.unwrap();
    let out = q
        .enqueue(vec![NewJob::new("email", "acme", json!({"to": "a@b.c", "n": 1}))])
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].duplicate);
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "email", "acme", JobState::Available), 1);
    assert_eq!(stats.oldest_available_seconds.len(), 1);

    let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let job = &claimed[0];
    assert_eq!(job.id, out[0].id);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.kind, "email");
    assert_eq!(job.project, "acme");
    assert_eq!(job.payload, json!({"to": "a@b.c", "n": 1}));
    assert_eq!(job.policy, JobPolicy::default());
    assert!(q.claim(&request(&["email"], 10)).await.unwrap().is_empty());

    let record = q.job(job.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Running);
    assert_eq!(record.worker.as_deref(), Some("w1"));
    assert!(record.lease_expires_at.is_some());
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "email", "acme", JobState::Running), 1);
    assert_eq!(count(&stats, "email", "acme", JobState::Available), 0);
    assert!(stats.oldest_available_seconds.is_empty());

    complete(&q, &claimed).await;
    // A second (stale) ack is ignored.
    q.acknowledge(vec![Ack::new(job, Outcome::Dead { error: "late".into() })])
        .await
        .unwrap();
    let record = q.job(job.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Completed);
    assert!(record.finished_at.is_some());
    assert_eq!(record.worker, None);
    assert_eq!(record.lease_expires_at, None);
    assert!(q.stats().await.unwrap().depth.is_empty());

    // Retry with backoff, then a dead attempt.
    let id = q
        .enqueue(vec![NewJob::new("email", "acme", json!(null))])
        .await
        .unwrap()[0]
        .id;
    let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
    q.acknowledge(vec![Ack::new(
        &claimed[0],
        Outcome::Retry {
            at: Utc::now() - chrono::Duration::seconds(1),
            error: "boom".into(),
        },
    )])
    .await
    .unwrap();
    let record = q.job(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Scheduled);
    assert_eq!(record.last_error.as_deref(), Some("boom"));
    let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 2);
    q.acknowledge(vec![Ack::new(&claimed[0], Outcome::Dead { error: "x".into() })])
        .await
        .unwrap();
    assert_eq!(count(&q.stats().await.unwrap(), "email", "acme", JobState::Dead), 1);
    q.retry(id).await.unwrap();
    let record = q.job(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Available, 0));
    assert!(matches!(q.retry(id).await, Err(QueueError::NotRetryable { .. })));
    assert!(matches!(q.retry(999_999).await, Err(QueueError::JobNotFound(_))));
    cleanup(&q).await;
}

#[tokio::test]
async fn unique_keys_deduplicate() {
    let q = queue().await;
    let a = q
        .enqueue(vec![
            NewJob::new("k", "p", json!(1)).unique_key("u1"),
            NewJob::new("k", "p", json!(2)).unique_key("u1"),
            NewJob::new("k", "p", json!(3)),
        ])
        .await
        .unwrap();
    assert!(!a[0].duplicate);
    assert_eq!(
        a[1],
        Enqueued {
            id: a[0].id,
            duplicate: true
        }
    );
    assert!(!a[2].duplicate);
    let b = q
        .enqueue(vec![NewJob::new("k", "p", json!(4)).unique_key("u1")])
        .await
        .unwrap();
    assert_eq!(
        b[0],
        Enqueued {
            id: a[0].id,
            duplicate: true
        }
    );
    assert_eq!(count(&q.stats().await.unwrap(), "k", "p", JobState::Available), 2);
    // The key holds until the job is pruned.
    complete(&q, &q.claim(&request(&["k"], 10)).await.unwrap()).await;
    let c = q
        .enqueue(vec![NewJob::new("k", "p", json!(5)).unique_key("u1")])
        .await
        .unwrap();
    assert!(c[0].duplicate);
    assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(5)).await.unwrap(), 2);
    assert!(q.job(a[0].id).await.unwrap().is_none());
    let d = q
        .enqueue(vec![NewJob::new("k", "p", json!(6)).unique_key("u1")])
        .await
        .unwrap();
    assert!(!d[0].duplicate);
    cleanup(&q).await;
}

#[tokio::test]
async fn priority_then_age_order_and_unhandled_kinds_stay() {
    let q = queue().await;
    let ids: Vec<JobId> = q
        .enqueue(vec![
            NewJob::new("a", "p", json!(0)).with_priority(5),
            NewJob::new("a", "p", json!(1)).with_priority(1),
            NewJob::new("b", "p", json!(2)).with_priority(3),
            NewJob::new("a", "p", json!(3)).with_priority(1),
            NewJob::new("c", "p", json!(4)).with_priority(0),
            NewJob::new("a", "p", json!(5)).with_priority(-2),
        ])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let mut order = Vec::new();
    loop {
        let got = q.claim(&request(&["a", "b"], 1)).await.unwrap();
        if got.is_empty() {
            break;
        }
        order.push(got[0].id);
    }
    assert_eq!(order, vec![ids[5], ids[1], ids[3], ids[2], ids[0]]);
    assert_eq!(q.job(ids[4]).await.unwrap().unwrap().state, JobState::Available);
    let got = q.claim(&request(&["c"], 5)).await.unwrap();
    assert_eq!(got.len(), 1);
    cleanup(&q).await;
}

#[tokio::test]
async fn max_running_caps_across_claims_and_processes() {
    let q1 = queue().await;
    let q2 = RedisQueue::connect_with_prefix(&url(), q1.prefix()).await.unwrap();
    q1.set_project_limits(
        "capped",
        ProjectLimits {
            max_running: Some(2),
            jobs_per_minute: None,
        },
    )
    .await
    .unwrap();
    q1.enqueue((0..5).map(|i| NewJob::new("k", "capped", json!(i))).collect())
        .await
        .unwrap();
    let first = q1.claim(&request(&["k"], 10)).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(q2.claim(&request(&["k"], 10)).await.unwrap().is_empty());
    complete(&q2, &first[..1]).await;
    let again = q2.claim(&request(&["k"], 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(q1.claim(&request(&["k"], 10)).await.unwrap().is_empty());
    cleanup(&q1).await;
}

#[tokio::test]
async fn claims_split_fairly_like_fair_quotas() {
    let q = queue().await;
    for (project, limits) in [
        (
            "a",
            ProjectLimits {
                max_running: Some(2),
                jobs_per_minute: None,
            },
        ),
        (
            "c",
            ProjectLimits {
                max_running: Some(0),
                jobs_per_minute: None,
            },
        ),
        (
            "d",
            ProjectLimits {
                max_running: None,
                jobs_per_minute: Some(3),
            },
        ),
    ] {
        q.set_project_limits(project, limits).await.unwrap();
    }
    for project in ["a", "b", "c", "d"] {
        q.enqueue((0..20).map(|i| NewJob::new("k", project, json!(i))).collect())
            .await
            .unwrap();
    }
    let candidates = vec![
        Candidate {
            project: "a".into(),
            room: Some(2),
        },
        Candidate {
            project: "b".into(),
            room: None,
        },
        Candidate {
            project: "c".into(),
            room: Some(0),
        },
        Candidate {
            project: "d".into(),
            room: Some(3),
        },
    ];
    let expected = fair_quotas(&candidates, 12, 0);
    let got = q.claim(&request(&["k"], 12)).await.unwrap();
    let mut per: HashMap<String, u32> = HashMap::new();
    for job in &got {
        *per.entry(job.project.clone()).or_default() += 1;
    }
    let mut per: Vec<(String, u32)> = per.into_iter().collect();
    per.sort();
    assert_eq!(per, expected);
    // The rate limit's tokens are spent: d gets nothing more for now.
    let more = q.claim(&request(&["k"], 50)).await.unwrap();
    assert!(more.iter().all(|j| j.project == "b"), "{more:?}");
    cleanup(&q).await;
}

#[tokio::test]
async fn enqueue_wakes_waiters_and_bulk_enqueue_is_chunked() {
    let q = Arc::new(queue().await);
    // Let the subscription settle.
    q.wait_for_work(Duration::from_millis(200)).await;
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            q.wait_for_work(Duration::from_secs(5)).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let jobs: Vec<NewJob> = (0..2_500)
        .map(|i| NewJob::new("bulk", "p", json!({ "i": i })))
        .collect();
    let out = q.enqueue(jobs).await.unwrap();
    assert_eq!(out.len(), 2_500);
    assert!(out.windows(2).all(|w| w[0].id < w[1].id));
    assert!(waiter.await.unwrap() < Duration::from_secs(2));
    assert_eq!(
        count(&q.stats().await.unwrap(), "bulk", "p", JobState::Available),
        2_500
    );
    let got = q.claim(&request(&["bulk"], 2_000)).await.unwrap();
    assert_eq!(got.len(), 2_000);
    assert_eq!(got[0].payload, json!({ "i": 0 }));
    complete(&q, &got).await;
    assert_eq!(count(&q.stats().await.unwrap(), "bulk", "p", JobState::Available), 500);
    cleanup(&q).await;
}

#[tokio::test]
async fn every_kind_of_a_claim_gets_a_share_of_the_candidates() {
    let q = queue().await;
    // More projects with work of the first kind than one claim considers...
    let n = MAX_PROJECTS_PER_CLAIM + 44;
    q.enqueue((0..n).map(|i| NewJob::new("a", format!("p{i:04}"), json!(i))).collect())
        .await
        .unwrap();
    // ...must not hide the only project with work of the second.
    let b = q.enqueue(vec![NewJob::new("b", "zz", json!(0))]).await.unwrap()[0].id;
    let got = q.claim(&request(&["a", "b"], MAX_CLAIM)).await.unwrap();
    assert!(got.iter().any(|j| j.id == b), "kind b starved: {} claimed", got.len());
    assert_eq!(
        got.len(),
        MAX_PROJECTS_PER_CLAIM,
        "one job from each of the most projects"
    );
    // Whichever kind the rotation starts at, the other still gets its share.
    let c = q.enqueue(vec![NewJob::new("b", "zz", json!(1))]).await.unwrap()[0].id;
    let got = q.claim(&request(&["a", "b"], MAX_CLAIM)).await.unwrap();
    assert!(got.iter().any(|j| j.id == c), "kind b starved: {} claimed", got.len());
    cleanup(&q).await;
}

#[tokio::test]
async fn projects_without_room_take_no_candidate_slots() {
    let q = queue().await;
    let capped: Vec<String> = (0..400).map(|i| format!("capped{i:03}")).collect();
    let open: Vec<String> = (0..100).map(|i| format!("open{i:03}")).collect();
    for project in &capped {
        q.set_project_limits(
            project,
            ProjectLimits {
                max_running: Some(0),
                jobs_per_minute: None,
            },
        )
        .await
        .unwrap();
    }
    q.enqueue(
        capped
            .iter()
            .chain(&open)
            .map(|p| NewJob::new("k", p, json!(0)))
            .collect(),
    )
    .await
    .unwrap();
    // 500 projects have work, but only 100 may start any: one claim serves all of those.
    let got = q.claim(&request(&["k"], MAX_CLAIM)).await.unwrap();
    assert_eq!(got.len(), open.len(), "capped projects crowded out open ones");
    assert!(got.iter().all(|j| j.project.starts_with("open")));
    cleanup(&q).await;
}

#[tokio::test]
async fn the_token_buckets_clock_never_moves_back() {
    let q = queue().await;
    q.set_project_limits(
        "r",
        ProjectLimits {
            max_running: None,
            jobs_per_minute: Some(60),
        },
    )
    .await
    .unwrap();
    q.enqueue((0..5).map(|i| NewJob::new("k", "r", json!(i))).collect())
        .await
        .unwrap();
    // A refill stamped ahead of this server's clock (e.g. by a primary before a failover).
    let ahead = Utc::now().timestamp_millis() + 60_000;
    let key = format!("{}:limits:r", q.prefix);
    let _: i64 = ::redis::cmd("HSET")
        .arg(&key)
        .arg("tokens")
        .arg(2)
        .arg("refilled_at_ms")
        .arg(ahead)
        .query_async(&mut q.con())
        .await
        .unwrap();
    assert_eq!(q.claim(&request(&["k"], 10)).await.unwrap().len(), 2);
    let at: i64 = ::redis::cmd("HGET")
        .arg(&key)
        .arg("refilled_at_ms")
        .query_async(&mut q.con())
        .await
        .unwrap();
    assert_eq!(at, ahead, "refilled_at moved backwards");
    assert!(q.claim(&request(&["k"], 10)).await.unwrap().is_empty());
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_job_is_dead_lettered_and_the_rest_of_the_claim_served() {
    let q = queue().await;
    let ids = q
        .enqueue(vec![NewJob::new("k", "p", json!({})), NewJob::new("k", "p", json!({}))])
        .await
        .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg(format!("{}:job:{}", q.prefix(), ids[0].id))
        .arg("payload")
        .arg("{not json")
        .query_async(&mut q.con())
        .await
        .unwrap();
    let claimed = q.claim(&request(&["k"], 10)).await.unwrap();
    assert_eq!(claimed.len(), 1, "the readable job is still served");
    assert_eq!(claimed[0].id, ids[1].id);
    let bad = q.job(ids[0].id).await.unwrap().unwrap();
    assert_eq!(bad.state, JobState::Dead);
    assert!(bad.last_error.unwrap().contains("fix or re-enqueue"));
    cleanup(&q).await;
}
