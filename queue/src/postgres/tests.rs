//! The claim's plan under a deep backlog (PostgreSQL only; the upkeep's tests are in
//! `queue/tests/postgres_upkeep.rs`, behaviour common to every backend in `queue/tests/behaviour.rs`).

use sqlx::{Connection, PgConnection, PgPool};

use super::claim::{HOT_PATH_BEGIN, PROJECTS_WITH_WORK, take_sql};
use super::*;

fn admin_url() -> String {
    std::env::var("ENCLII_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own with its queue (dropped by [`drop_database`] when the test
/// passes; CI sweeps `roundhouse_test_*` databases a failing test leaves behind).
async fn database() -> (PostgresQueue, String) {
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
    (PostgresQueue::connect(&url, 4).await.unwrap(), name)
}

async fn drop_database(queue: PostgresQueue, name: &str) {
    queue.pool().close().await;
    drop(queue);
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// `n` available jobs of one project, inserted in one statement.
async fn backlog(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
                                      backoff_base_ms, backoff_max_ms)
         SELECT 'noop', 'acme', '{}', 'available', 2, 3, 60000, 1000, 60000 FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
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
    let (queue, name) = database().await;
    let pool = queue.pool().clone();
    backlog(&pool, 20_000).await;
    let take = plan(&pool, HOT_PATH_BEGIN, &take_sql(), take_with_literals).await;
    assert!(take.contains("Index Scan using roundhouse_jobs_available"), "{take}");
    assert!(take.contains("Index Scan using roundhouse_jobs_pkey"), "{take}");
    for linear in ["Sort", "Bitmap", "Seq Scan", "Hash", "Merge"] {
        assert!(!take.contains(linear), "{linear}: {take}");
    }
    let projects = plan(&pool, HOT_PATH_BEGIN, PROJECTS_WITH_WORK, |s| s.replace("$1", "100")).await;
    for linear in ["Sort", "Bitmap", "Seq Scan on roundhouse_jobs"] {
        assert!(!projects.contains(linear), "{linear}: {projects}");
    }
    // Estimates that make the ordered index scan look dear (stale or missing statistics do this
    // under deep backlogs; here the strongest such preference): unguarded, the planner reads and
    // sorts every waiting row per claim; guarded, it keeps the index walk.
    let dear = "; SET LOCAL enable_indexscan = off";
    let unguarded = plan(&pool, &format!("BEGIN{dear}"), &take_sql(), take_with_literals).await;
    assert!(
        unguarded.contains("Sort") && unguarded.contains("Bitmap"),
        "{unguarded}"
    );
    let guarded = plan(
        &pool,
        &format!("{HOT_PATH_BEGIN}{dear}"),
        &take_sql(),
        take_with_literals,
    )
    .await;
    assert!(
        guarded.contains("Index Scan using roundhouse_jobs_available"),
        "{guarded}"
    );
    assert!(!guarded.contains("Sort") && !guarded.contains("Bitmap"), "{guarded}");
    drop_database(queue, &name).await;
}
