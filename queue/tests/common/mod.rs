//! Test harness: every test gets its own store — a fresh PostgreSQL database, a fresh SQLite
//! file, or a fresh Redis key prefix — so tests run in parallel.

#![allow(dead_code)]

use std::sync::Arc;

use enclii_queue::Backend;
use rand::Rng;

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::rng().random::<u64>())
}

/// Base URL of the PostgreSQL server (its `postgres` database); `ENCLII_TEST_POSTGRES_URL` overrides.
pub fn postgres_admin_url() -> String {
    std::env::var("ENCLII_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("ENCLII_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A test's own database, dropped (with any connections still open) when the test ends,
/// passing or failing: leftover databases would slow the shared server down for everyone.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await.ok()?;
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

/// Creates an empty database for one test.
pub async fn test_database() -> TestDatabase {
    let url = fresh_postgres_url().await;
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    TestDatabase { url, name }
}

/// Creates an empty database and returns its URL (prefer [`test_database`], which cleans up).
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = unique("roundhouse_test");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL must be running for the tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin);
    format!("{base}/{name}")
}

pub async fn postgres() -> (Arc<dyn Backend>, TestDatabase) {
    let db = test_database().await;
    let queue = enclii_queue::postgres::PostgresQueue::connect(&db.url, 8)
        .await
        .expect("connect to PostgreSQL");
    (Arc::new(queue), db)
}

pub fn fresh_sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique("roundhouse_test")));
    format!("sqlite://{}", path.display())
}

pub async fn sqlite() -> Arc<dyn Backend> {
    Arc::new(
        enclii_queue::sqlite::SqliteQueue::connect(&fresh_sqlite_url())
            .await
            .expect("open SQLite"),
    )
}

pub async fn redis() -> Arc<dyn Backend> {
    Arc::new(
        enclii_queue::redis::RedisQueue::connect_with_prefix(&redis_url(), &unique("rh_test"))
            .await
            .expect("Redis must be running for the tests"),
    )
}
