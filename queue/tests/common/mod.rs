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

/// Creates an empty database and returns its URL.
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

pub async fn postgres() -> Arc<dyn Backend> {
    Arc::new(
        enclii_queue::postgres::PostgresQueue::connect(&fresh_postgres_url().await, 8)
            .await
            .expect("connect to PostgreSQL"),
    )
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
