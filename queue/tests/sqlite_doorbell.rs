//! SQLite: a worker in another process than the enqueuer is woken by its doorbell, not by its
//! next poll. Two queues opened on one file stand in for two processes here: each has its own
//! in-memory notification, so only the doorbell can carry the wake-up from one to the other.

mod common;

use std::sync::Arc;
use std::time::Duration;

use enclii_queue::sqlite::SqliteQueue;
use enclii_queue::{Backend, NewJob};
use serde_json::json;

/// Far longer than any poll: a wait that ends before it was woken.
const FOREVER: Duration = Duration::from_secs(3_600);

#[tokio::test]
async fn a_worker_elsewhere_is_woken_when_work_is_enqueued() {
    let url = common::fresh_sqlite_url();
    let producer = SqliteQueue::connect(&url).await.unwrap();
    let worker = Arc::new(SqliteQueue::connect(&url).await.unwrap());
    for round in 0..3 {
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.wait_for_work(FOREVER).await }
        });
        // Let the waiter park before the ring.
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer
            .enqueue(vec![NewJob::new("email", "acme", json!({ "n": round }))])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the waiting queue was not woken"))
            .unwrap();
    }
}

#[tokio::test]
async fn the_doorbell_of_a_queue_that_is_gone_is_cleared_away() {
    let url = common::fresh_sqlite_url();
    let producer = SqliteQueue::connect(&url).await.unwrap();
    let database = url.trim_start_matches("sqlite://");
    let bells = std::path::PathBuf::from(format!("{database}.doorbells"));
    // A process that died without removing its doorbell leaves the socket file behind.
    let stale = bells.join("999999-deadbeef");
    drop(std::os::unix::net::UnixDatagram::bind(&stale).unwrap());
    assert!(stale.exists());
    // A queue that closes removes its own.
    let closed = SqliteQueue::connect(&url).await.unwrap();
    let bells_open = std::fs::read_dir(&bells).unwrap().count();
    drop(closed);
    assert_eq!(std::fs::read_dir(&bells).unwrap().count(), bells_open - 1);
    producer
        .enqueue(vec![NewJob::new("email", "acme", json!({}))])
        .await
        .unwrap();
    assert!(!stale.exists(), "the stale doorbell is still there");
}
