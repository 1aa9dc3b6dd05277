//! PostgreSQL-only properties under a deep backlog: the claim's plan and the queue's own upkeep.
//! (Behaviour common to every backend is in `queue/tests/behaviour.rs`.)

use sqlx::{Connection, PgConnection, PgPool};

use super::claim::{CLAIM_BEGIN, PROJECTS_WITH_WORK, take_sql};
use super::upkeep::{UPKEEP_LOCK, Upkeep, UpkeepPolicy, upkeep_once};
use super::*;
use crate::job::Outcome;

fn admin_url() -> String {
    std::env::var("ENCLII_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own, dropped at the end.
struct Database {
    name: String,
    queue: Option<PostgresQueue>,
}

impl Database {
    async fn create() -> Database {
        let name = format!("roundhouse_test_{:016x}", rand::random::<u64>());
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let queue = PostgresQueue::connect(&url, 4).await.unwrap();
        Database {
            name,
            queue: Some(queue),
        }
    }

    fn pool(&self) -> &PgPool {
        self.queue.as_ref().unwrap().pool()
    }

    /// `n` available jobs of one project, inserted in one statement; no ANALYZE runs (as on a
    /// server with autovacuum off, or before autovacuum wakes up after a bulk enqueue).
    async fn backlog(&self, n: i64) {
        sqlx::query(
            "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
                                          backoff_base_ms, backoff_max_ms)
             SELECT 'noop', 'acme', '{}', 'available', 2, 3, 60000, 1000, 60000 FROM generate_series(1, $1)",
        )
        .bind(n)
        .execute(self.pool())
        .await
        .unwrap();
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.queue.take());
        let name = std::mem::take(&mut self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url()).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// The plan of `statement` (with its parameters) as PostgreSQL would run it inside a
/// transaction opened with `begin`.
async fn plan(pool: &PgPool, begin: &str, statement: &str, bind: impl FnOnce(&str) -> String) -> String {
    let mut tx = pool.begin_with(sqlx::AssertSqlSafe(begin.to_string())).await.unwrap();
    let explain = bind(&format!("EXPLAIN {statement}"));
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.join("\n")
}

fn take_with_literals(statement: &str) -> String {
    statement
        .replace("$1::text[]", "ARRAY['acme']")
        .replace("$2::int4[]", "ARRAY[32]")
        .replace("$3", "ARRAY['noop']")
        .replace("$4", "'w1'")
        .replace("$5", "30000")
}

#[tokio::test]
async fn claims_walk_the_available_index_in_order_whatever_the_planner_estimates() {
    let db = Database::create().await;
    db.backlog(20_000).await;
    let take = plan(db.pool(), CLAIM_BEGIN, &take_sql(), take_with_literals).await;
    assert!(take.contains("Index Scan using roundhouse_jobs_available"), "{take}");
    assert!(!take.contains("Sort") && !take.contains("Bitmap"), "{take}");
    let projects = plan(db.pool(), CLAIM_BEGIN, PROJECTS_WITH_WORK, |s| s.replace("$1", "100")).await;
    assert!(!projects.contains("Sort") && !projects.contains("Bitmap"), "{projects}");
    // Estimates that make the ordered index scan look dear (stale or missing statistics do this
    // under deep backlogs; here the strongest such preference): unguarded, the planner reads and
    // sorts every waiting row per claim; guarded, it keeps the index walk.
    let dear = "; SET LOCAL enable_indexscan = off";
    let unguarded = plan(db.pool(), &format!("BEGIN{dear}"), &take_sql(), take_with_literals).await;
    assert!(
        unguarded.contains("Sort") && unguarded.contains("Bitmap"),
        "{unguarded}"
    );
    let guarded = plan(
        db.pool(),
        &format!("{CLAIM_BEGIN}{dear}"),
        &take_sql(),
        take_with_literals,
    )
    .await;
    assert!(
        guarded.contains("Index Scan using roundhouse_jobs_available"),
        "{guarded}"
    );
    assert!(!guarded.contains("Sort") && !guarded.contains("Bitmap"), "{guarded}");
}

#[tokio::test]
async fn the_queue_vacuums_its_own_tables_once_enough_rows_died() {
    let db = Database::create().await;
    db.backlog(3_000).await;
    let q = db.queue.as_ref().unwrap();
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
        done = upkeep_once(db.pool(), &policy).await.unwrap();
        if !done.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.contains(&("roundhouse_jobs", Upkeep::VacuumAnalyze)), "{done:?}");
    let (vacuums, analyzes): (i64, i64) = sqlx::query_as(
        "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relid = 'roundhouse_jobs'::regclass",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((vacuums, analyzes), (1, 1));
}

#[tokio::test]
async fn one_upkeep_at_a_time_across_processes() {
    let db = Database::create().await;
    db.backlog(2_000).await;
    sqlx::query("UPDATE roundhouse_jobs SET state = 'cancelled', finished_at = now()")
        .execute(db.pool())
        .await
        .unwrap();
    // Another process holds the upkeep lock.
    let mut other = db.pool().acquire().await.unwrap();
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
    assert_eq!(upkeep_once(db.pool(), &policy).await.unwrap(), vec![]);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(UPKEEP_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert!(!upkeep_once(db.pool(), &policy).await.unwrap().is_empty());
}
