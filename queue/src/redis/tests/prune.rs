//! Delayed jobs and pruning of finished jobs and runs.

use super::*;

#[tokio::test]
async fn delayed_jobs_become_due_and_prune_spares_running_pipelines() {
    let q = queue().await;
    assert!(q.job(42).await.unwrap().is_none());
    assert!(q.pipeline(42).await.unwrap().is_none());
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    let id = q
        .enqueue(vec![NewJob::new("k", "p", json!(1)).run_at(soon)])
        .await
        .unwrap()[0]
        .id;
    assert!(q.claim(&request(&["k"], 10)).await.unwrap().is_empty());
    assert_eq!(count(&q.stats().await.unwrap(), "k", "p", JobState::Scheduled), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = q.claim(&request(&["k"], 10)).await.unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(got[0].run_at.timestamp_millis(), soon.timestamp_millis());
    complete(&q, &got).await;

    let run = q
        .enqueue_pipeline(NewPipeline {
            project: "p".into(),
            name: "t".into(),
            supersede_key: None,
            unique_key: None,
            steps: vec![step("a", &[]), step("b", &["a"])],
        })
        .await
        .unwrap();
    complete(&q, &q.claim(&request(&["a"], 10)).await.unwrap()).await;
    let later = Utc::now() + chrono::Duration::seconds(5);
    // The plain job goes; step `a` stays while its run is still going.
    assert_eq!(q.prune(later).await.unwrap(), 1);
    assert!(q.job(id).await.unwrap().is_none());
    assert_eq!(q.pipeline(run.id).await.unwrap().unwrap().steps.len(), 2);
    complete(&q, &q.claim(&request(&["b"], 10)).await.unwrap()).await;
    assert_eq!(
        q.pipeline(run.id).await.unwrap().unwrap().state,
        PipelineState::Succeeded
    );
    assert_eq!(q.prune(later).await.unwrap(), 2);
    assert!(q.pipeline(run.id).await.unwrap().is_none());
    assert_eq!(q.prune(later).await.unwrap(), 0);
    cleanup(&q).await;
}

async fn zcount_before(q: &RedisQueue, key: &str, before: DateTime<Utc>) -> i64 {
    ::redis::cmd("ZCOUNT")
        .arg(format!("{}:{key}", q.prefix))
        .arg("-inf")
        .arg(format!("({}", before.timestamp_millis()))
        .query_async(&mut q.con())
        .await
        .unwrap()
}

async fn prune_pipelines_call(q: &RedisQueue, before_ms: i64, budget: usize) -> (u64, u64) {
    let mut inv = q.scripts.prune_pipelines.prepare_invoke();
    inv.arg(&q.prefix).arg(before_ms).arg(budget);
    inv.invoke_async(&mut q.con()).await.unwrap()
}

#[tokio::test]
async fn prune_leaves_nothing_before_the_cutoff_to_step_over() {
    let q = queue().await;
    let plain = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
    complete(&q, &q.claim(&request(&["k"], 1)).await.unwrap()).await;
    // A running pipeline with a finished step: the step is kept.
    let running = q
        .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"])], None))
        .await
        .unwrap();
    complete(&q, &q.claim(&request(&["a"], 1)).await.unwrap()).await;
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(q.prune(later).await.unwrap(), 1);
    assert!(q.job(plain).await.unwrap().is_none());
    assert_eq!(q.pipeline(running.id).await.unwrap().unwrap().steps.len(), 2);
    // What is kept is out of the range the next prune with this cutoff scans, so every
    // prune script call starts at the front (no offset to step over) and does O(batch) work.
    assert_eq!(zcount_before(&q, "finished", later).await, 0);
    assert_eq!(zcount_before(&q, "pfinished", later).await, 0);

    // A stopped run with a step that finished after the cutoff is kept, and out of range too.
    let stopped = q
        .enqueue_pipeline(pipeline(vec![step("c", &[]), step("d", &[])], None))
        .await
        .unwrap();
    let cd = q.claim(&request(&["c", "d"], 2)).await.unwrap();
    let c = cd.iter().find(|j| j.kind == "c").unwrap();
    let d = cd.iter().find(|j| j.kind == "d").unwrap();
    q.acknowledge(vec![Ack::new(c, Outcome::Dead { error: "x".into() })])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.acknowledge(vec![Ack::new(d, Outcome::Cancelled { reason: "stop".into() })])
        .await
        .unwrap();
    assert_eq!(q.prune(cutoff).await.unwrap(), 0);
    assert_eq!(zcount_before(&q, "finished", cutoff).await, 0);
    assert_eq!(zcount_before(&q, "pfinished", cutoff).await, 0);
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(q.prune(later).await.unwrap(), 2, "the stopped run's steps");
    assert!(q.pipeline(stopped.id).await.unwrap().is_none());
    // The running pipeline's kept step comes back to prune once its run is over.
    complete(&q, &q.claim(&request(&["b"], 1)).await.unwrap()).await;
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(q.prune(later).await.unwrap(), 2);
    assert!(q.pipeline(running.id).await.unwrap().is_none());
    assert_eq!(zcount_before(&q, "finished", later).await, 0);
    assert_eq!(zcount_before(&q, "pfinished", later).await, 0);

    // A call stops after its budget of runs and steps read (but reads at least one run).
    for _ in 0..3 {
        let run = q
            .enqueue_pipeline(pipeline(vec![step("x", &[]), step("y", &[])], None))
            .await
            .unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        q.cancel(record.steps[0].job).await.unwrap();
    }
    let later = (Utc::now() + chrono::Duration::seconds(5)).timestamp_millis();
    assert_eq!(
        prune_pipelines_call(&q, later, 1).await,
        (2, 1),
        "one run of 2 steps, more to do"
    );
    assert_eq!(prune_pipelines_call(&q, later, 4).await, (2, 1));
    assert_eq!(prune_pipelines_call(&q, later, 100).await, (2, 0));
    assert_eq!(prune_pipelines_call(&q, later, 100).await, (0, 0));
    cleanup(&q).await;
}

#[tokio::test]
async fn prune_keeps_a_pipelines_steps_together() {
    let q = queue().await;
    let run = q
        .enqueue_pipeline(pipeline(
            vec![
                step("a", &[]),
                step("b", &["a"]),
                step("c", &["a"]),
                step("d", &["b", "c"]),
                step("e", &["d"]),
            ],
            None,
        ))
        .await
        .unwrap();
    complete(&q, &q.claim(&request(&["a"], 1)).await.unwrap()).await;
    let bc = q.claim(&request(&["b", "c"], 2)).await.unwrap();
    let b = bc.iter().find(|j| j.kind == "b").unwrap();
    let c = bc.iter().find(|j| j.kind == "c").unwrap();
    q.acknowledge(vec![Ack::new(b, Outcome::Dead { error: "failed".into() })])
        .await
        .unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Failed);
    assert_eq!(state_of(&record, "d"), JobState::Cancelled);
    assert!(q.job(c.id).await.unwrap().unwrap().cancel_requested);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.acknowledge(vec![Ack::new(
        c,
        Outcome::Cancelled {
            reason: "stopped".into(),
        },
    )])
    .await
    .unwrap();
    assert_eq!(
        q.prune(cutoff).await.unwrap(),
        0,
        "c finished after the cutoff: keep the run"
    );
    assert_eq!(q.pipeline(run.id).await.unwrap().unwrap().steps.len(), 5);
    assert_eq!(q.prune(cutoff).await.unwrap(), 0);
    assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 5);
    assert!(q.pipeline(run.id).await.unwrap().is_none());
    assert!(q.job(c.id).await.unwrap().is_none());
    assert!(q.stats().await.unwrap().depth.is_empty());
    cleanup(&q).await;
}
