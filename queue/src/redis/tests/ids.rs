//! The id sequences after a data loss: raised to the caller's floors, never lowered.

use super::*;

async fn next_ids(q: &RedisQueue) -> (PipelineId, JobId) {
    let run = q.enqueue_pipeline(pipeline(vec![step("a", &[])], None)).await.unwrap();
    let record = q.pipeline(run.id).await.unwrap().unwrap();
    (run.id, record.steps[0].job)
}

#[tokio::test]
async fn ids_are_raised_above_the_floors_and_never_lowered() {
    let q = queue().await;
    let (p1, j1) = next_ids(&q).await;
    assert_eq!((p1, j1), (1, 1));
    q.ensure_ids_above(100, 1_000).await.unwrap();
    assert_eq!(next_ids(&q).await, (101, 1_001));
    let single = q.enqueue(vec![NewJob::new("a", "p", json!({}))]).await.unwrap();
    assert_eq!(single[0].id, 1_002);
    // Lower floors change nothing.
    q.ensure_ids_above(5, 5).await.unwrap();
    assert_eq!(next_ids(&q).await, (102, 1_003));
    // The data is lost (a restart without persistence): ids would start again from 1.
    cleanup(&q).await;
    q.ensure_ids_above(102, 1_003).await.unwrap();
    assert_eq!(next_ids(&q).await, (103, 1_004), "no id is handed out twice");
    cleanup(&q).await;
}
