//! Transactional enqueue: a job commits with the rows it belongs to, or neither does.

mod common;

use enclii_queue::NewJob;
use enclii_queue::postgres::PostgresQueue;
use enclii_queue::sqlite::SqliteQueue;
use serde_json::json;

/// Creates a table of the caller's, then for a rolled-back and a committed transaction inserts a
/// row and enqueues a job in it: both exist afterwards, or neither.
macro_rules! commits_with_the_callers_rows {
    ($q:ident, $begin:expr) => {{
        let q = &$q;
        sqlx::query("CREATE TABLE releases (id INTEGER PRIMARY KEY, sha TEXT NOT NULL)")
            .execute(q.pool())
            .await
            .unwrap();
        for commit in [false, true] {
            let mut tx = $begin.await.unwrap();
            sqlx::query("INSERT INTO releases (id, sha) VALUES (1, 'abc')")
                .execute(&mut *tx)
                .await
                .unwrap();
            let ids = q
                .enqueue_in(&mut tx, vec![NewJob::new("build", "p", json!({}))])
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            let job = enclii_queue::Backend::job(q, ids[0].id).await.unwrap();
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM releases")
                .fetch_one(q.pool())
                .await
                .unwrap();
            assert_eq!(job.is_some(), commit);
            assert_eq!(rows, commit as i64);
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_jobs_commit_and_roll_back_with_the_callers_rows() {
    let db = common::test_database().await;
    let q = PostgresQueue::connect(&db.url, 4).await.unwrap();
    commits_with_the_callers_rows!(q, q.pool().begin());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_jobs_commit_and_roll_back_with_the_callers_rows() {
    let q = SqliteQueue::connect(&common::fresh_sqlite_url()).await.unwrap();
    commits_with_the_callers_rows!(q, q.pool().begin_with("BEGIN IMMEDIATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let err = match PostgresQueue::connect("postgres://enclii:s3cret-pw@127.0.0.1:1/db", 2).await {
        Ok(_) => panic!("port 1 has no PostgreSQL"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.contains("cannot reach the postgres queue backend"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(err.is_transient());
    let err = match enclii_queue::open("mysql://x", 1).await {
        Ok(_) => panic!("mysql is not a backend"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("use postgres://, sqlite:// or redis://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_sqlite_row_is_dead_lettered_not_blocking_the_queue() {
    use enclii_queue::{Backend, ClaimRequest, JobState};
    let q = SqliteQueue::connect(&common::fresh_sqlite_url()).await.unwrap();
    let ids = q
        .enqueue(vec![
            NewJob::new("noop", "p", json!({})),
            NewJob::new("noop", "p", json!({})),
        ])
        .await
        .unwrap();
    sqlx::query("UPDATE roundhouse_jobs SET payload = '{not json' WHERE id = ?")
        .bind(ids[0].id)
        .execute(q.pool())
        .await
        .unwrap();
    let request = ClaimRequest {
        worker: "w".into(),
        kinds: vec!["noop".into()],
        limit: 10,
        lease: std::time::Duration::from_secs(30),
    };
    let claimed = q.claim(&request).await.unwrap();
    assert_eq!(claimed.len(), 1, "the good job is still served");
    assert_eq!(claimed[0].id, ids[1].id);
    let bad = q.job(ids[0].id).await.unwrap().unwrap();
    assert_eq!(bad.state, JobState::Dead);
    assert!(bad.last_error.unwrap().contains("not JSON"));
    assert_eq!(bad.payload["corrupt_payload"], "{not json");
}
