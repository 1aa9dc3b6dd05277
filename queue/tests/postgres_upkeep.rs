//! PostgreSQL: the queue vacuums and analyzes its own tables (`enclii_queue::postgres::upkeep`),
//! one process at a time.

mod common;

use std::time::Duration;

use enclii_queue::postgres::PostgresQueue;
use enclii_queue::postgres::upkeep::{UPKEEP_LOCK, Upkeep, UpkeepPolicy, upkeep_once};
use enclii_queue::{Ack, Backend, ClaimRequest, NewJob, Outcome};
use serde_json::json;

/// `n` available jobs of one project.
async fn backlog(queue: &PostgresQueue, n: usize) {
    let jobs = (0..n).map(|i| NewJob::new("noop", "acme", json!({ "n": i }))).collect();
    queue.enqueue(jobs).await.unwrap();
}

#[tokio::test]
async fn the_queue_vacuums_its_own_tables_once_enough_rows_died() {
    let db = common::test_database().await;
    let q = PostgresQueue::connect(&db.url, 4).await.unwrap();
    backlog(&q, 3_000).await;
    let request = ClaimRequest {
        worker: "w1".into(),
        kinds: vec!["noop".into()],
        limit: 1_000,
        lease: Duration::from_secs(30),
    };
    let mut claimed = 0;
    while claimed < 3_000 {
        let jobs = q.claim(&request).await.unwrap();
        claimed += jobs.len();
        q.acknowledge(jobs.iter().map(|j| Ack::new(j, Outcome::Completed)).collect())
            .await
            .unwrap();
    }
    let policy = UpkeepPolicy {
        vacuum_dead_rows: 1_000,
        ..UpkeepPolicy::default()
    };
    // The table's counters reach the statistics system up to a second after the transactions.
    let mut done = Vec::new();
    for _ in 0..50 {
        done = upkeep_once(q.pool(), &policy).await.unwrap();
        if !done.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.contains(&("roundhouse_jobs", Upkeep::VacuumAnalyze)), "{done:?}");
    let (vacuums, analyzes): (i64, i64) = sqlx::query_as(
        "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relid = 'roundhouse_jobs'::regclass",
    )
    .fetch_one(q.pool())
    .await
    .unwrap();
    assert_eq!((vacuums, analyzes), (1, 1));
}

#[tokio::test]
async fn one_upkeep_at_a_time_across_processes() {
    let db = common::test_database().await;
    let q = PostgresQueue::connect(&db.url, 4).await.unwrap();
    backlog(&q, 2_000).await;
    sqlx::query("UPDATE roundhouse_jobs SET state = 'cancelled', finished_at = now()")
        .execute(q.pool())
        .await
        .unwrap();
    // Another process holds the upkeep lock.
    let mut other = q.pool().acquire().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(UPKEEP_LOCK)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);
    let policy = UpkeepPolicy {
        vacuum_dead_rows: 1,
        analyze_changed_rows: 1,
        analyze_changed_percent: 0,
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(upkeep_once(q.pool(), &policy).await.unwrap(), vec![]);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(UPKEEP_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert!(!upkeep_once(q.pool(), &policy).await.unwrap().is_empty());
}
