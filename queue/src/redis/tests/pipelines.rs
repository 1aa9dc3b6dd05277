//! Pipelines: fan-out and fan-in, failure and retry of steps, superseded runs.

use super::*;

#[tokio::test]
async fn pipeline_fan_out_fan_in() {
    let q = queue().await;
    let new = || NewPipeline {
        project: "p".into(),
        name: "diamond".into(),
        supersede_key: None,
        unique_key: Some("delivery-1".into()),
        steps: vec![
            step("d", &["b", "c"]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("a", &[]),
        ],
    };
    let run = q.enqueue_pipeline(new()).await.unwrap();
    assert!(!run.duplicate);
    assert_eq!(q.enqueue_pipeline(new()).await.unwrap().id, run.id);
    let all = ["a", "b", "c", "d"];

    let first = q.claim(&request(&all, 10)).await.unwrap();
    assert_eq!(first.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(first[0].pipeline, Some(run.id));
    assert_eq!(first[0].step.as_deref(), Some("a"));
    complete(&q, &first).await;

    let mut second = q.claim(&request(&all, 10)).await.unwrap();
    second.sort_by(|x, y| x.kind.cmp(&y.kind));
    assert_eq!(second.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    complete(&q, &second[..1]).await;
    assert!(q.claim(&request(&all, 10)).await.unwrap().is_empty(), "d waits for c");
    // An ack that does not name the pipeline still moves it on.
    q.acknowledge(vec![Ack {
        pipeline: None,
        ..Ack::new(&second[1], Outcome::Completed)
    }])
    .await
    .unwrap();

    let third = q.claim(&request(&all, 10)).await.unwrap();
    assert_eq!(third.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["d"]);
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    complete(&q, &third).await;

    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Succeeded);
    assert!(record.finished_at.is_some());
    assert_eq!(record.steps.len(), 4);
    assert!(record.steps.iter().all(|s| s.state == JobState::Completed));
    assert_eq!(record.steps[0].name, "a");
    let d = record.steps.iter().find(|s| s.name == "d").unwrap();
    assert_eq!(d.needs, vec!["b", "c"]);
    assert!(q.stats().await.unwrap().depth.is_empty());
    assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(5)).await.unwrap(), 4);
    assert!(q.pipeline(run.id).await.unwrap().is_none());
    cleanup(&q).await;
}

#[tokio::test]
async fn failed_step_stops_the_run_and_retry_reopens_it() {
    let q = queue().await;
    let run = q
        .enqueue_pipeline(NewPipeline {
            project: "p".into(),
            name: "t".into(),
            supersede_key: Some("svc:main".into()),
            unique_key: None,
            steps: vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])],
        })
        .await
        .unwrap();
    let got = q.claim(&request(&["a", "b", "c"], 10)).await.unwrap();
    assert_eq!(got.len(), 2);
    let a = got.iter().find(|j| j.kind == "a").unwrap();
    let b = got.iter().find(|j| j.kind == "b").unwrap();
    q.acknowledge(vec![Ack::new(a, Outcome::Dead { error: "bad".into() })])
        .await
        .unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Failed);
    let c = record.steps.iter().find(|s| s.name == "c").unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    // b is running: its worker is asked to stop.
    let hb = q.heartbeat("w1", &[b.lease()], Duration::from_secs(30)).await.unwrap();
    assert_eq!(hb.cancel, vec![b.id]);
    q.acknowledge(vec![Ack::new(b, Outcome::Cancelled { reason: "stop".into() })])
        .await
        .unwrap();

    q.retry(a.id).await.unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    let states: Vec<_> = record.steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        vec![
            ("a", JobState::Available),
            ("b", JobState::Available),
            ("c", JobState::Pending)
        ]
    );
    // A newer run with the same supersede key cancels this one.
    let newer = q
        .enqueue_pipeline(NewPipeline {
            project: "p".into(),
            name: "t".into(),
            supersede_key: Some("svc:main".into()),
            unique_key: None,
            steps: vec![step("a", &[])],
        })
        .await
        .unwrap();
    assert_eq!(newer.superseded, vec![run.id]);
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Superseded);
    assert!(record.steps.iter().all(|s| s.state == JobState::Cancelled));
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "a", "p", JobState::Available), 1);
    assert_eq!(count(&stats, "c", "p", JobState::Pending), 0);
    cleanup(&q).await;
}

#[tokio::test]
async fn retry_of_a_superseded_runs_step_is_refused() {
    let q = queue().await;
    let old = q
        .enqueue_pipeline(pipeline(vec![step("a", &[])], Some("svc")))
        .await
        .unwrap();
    let newer = q
        .enqueue_pipeline(pipeline(vec![step("a", &[])], Some("svc")))
        .await
        .unwrap();
    assert_eq!(newer.superseded, vec![old.id]);
    let before = q.pipeline(old.id).await.unwrap().unwrap();
    let job = before.steps[0].job;
    assert_eq!(before.steps[0].state, JobState::Cancelled);
    match q.retry(job).await {
        Err(QueueError::SupersededPipeline { id, pipeline }) => assert_eq!((id, pipeline), (job, old.id)),
        other => panic!("expected SupersededPipeline, got {other:?}"),
    }
    assert_eq!(q.pipeline(old.id).await.unwrap().unwrap(), before);
    assert_eq!(count(&q.stats().await.unwrap(), "a", "p", JobState::Available), 1);
    cleanup(&q).await;
}

#[tokio::test]
async fn retried_step_waits_for_its_needs() {
    let q = queue().await;
    let run = q
        .enqueue_pipeline(pipeline(vec![step("build", &[]), step("deploy", &["build"])], None))
        .await
        .unwrap();
    let build = q.claim(&request(&["build"], 1)).await.unwrap().remove(0);
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    let deploy = record.steps.iter().find(|s| s.name == "deploy").unwrap().job;
    // The operator cancels the pending deploy; the run stops and build is asked to stop.
    assert_eq!(q.cancel(deploy).await.unwrap(), CancelOutcome::Cancelled);
    q.acknowledge(vec![Ack::new(&build, Outcome::Cancelled { reason: "stop".into() })])
        .await
        .unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Cancelled);

    let before = Utc::now() - chrono::Duration::seconds(1);
    q.retry(deploy).await.unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    assert_eq!(record.state, PipelineState::Running);
    assert_eq!(state_of(&record, "build"), JobState::Available);
    assert_eq!(
        state_of(&record, "deploy"),
        JobState::Pending,
        "build has not completed"
    );
    let d = q.job(deploy).await.unwrap().unwrap();
    assert_eq!((d.attempt, d.finished_at, d.cancel_requested), (0, None, false));
    assert!(d.run_at > before);
    let stats = q.stats().await.unwrap();
    assert_eq!(count(&stats, "deploy", "p", JobState::Pending), 1);
    assert_eq!(count(&stats, "deploy", "p", JobState::Available), 0);
    assert_eq!(count(&stats, "build", "p", JobState::Available), 1);
    assert!(q.claim(&request(&["deploy"], 1)).await.unwrap().is_empty());

    let build = q.claim(&request(&["build"], 1)).await.unwrap().remove(0);
    assert_eq!((build.attempt, build.lease_token), (1, 2));
    complete(&q, &[build]).await;
    let deploy_job = q.claim(&request(&["deploy"], 1)).await.unwrap().remove(0);
    assert_eq!(deploy_job.id, deploy);
    complete(&q, &[deploy_job]).await;
    assert_eq!(
        q.pipeline(run.id).await.unwrap().unwrap().state,
        PipelineState::Succeeded
    );
    assert!(q.stats().await.unwrap().depth.is_empty());
    cleanup(&q).await;
}
