//! A durable record of handler completions that worker child processes write and the parent reads:
//! a table beside the queue's (PostgreSQL, SQLite) or a Redis list under the run's prefix.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Result;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::BackendKind;

/// One completed handler run.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub job: i64,
    pub attempt: u32,
    /// Enqueue→start of this attempt, µs.
    pub latency_us: i64,
    /// Wall time of the completion, µs since the epoch.
    pub done_us: i64,
}

#[derive(Clone)]
pub enum Store {
    Pg(PgPool),
    Sqlite(SqlitePool),
    Redis {
        conn: redis::aio::ConnectionManager,
        key: String,
    },
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS loadtest_completions (
    job_id BIGINT NOT NULL, attempt INT NOT NULL, latency_us BIGINT NOT NULL, done_us BIGINT NOT NULL)";

impl Store {
    pub async fn connect(kind: BackendKind, url: &str, prefix: &str) -> Result<Store> {
        Ok(match kind {
            BackendKind::Postgres => Store::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect(url)
                    .await?,
            ),
            BackendKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                Store::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(2)
                        .connect_with(options)
                        .await?,
                )
            }
            BackendKind::Redis => {
                let client = redis::Client::open(url)?;
                Store::Redis {
                    conn: client.get_connection_manager().await?,
                    key: format!("{prefix}:loadtest:completions"),
                }
            }
        })
    }

    /// Creates the completions table (a no-op for Redis).
    pub async fn init(&self) -> Result<()> {
        match self {
            Store::Pg(pool) => {
                sqlx::query(CREATE).execute(pool).await?;
            }
            Store::Sqlite(pool) => {
                sqlx::query(CREATE).execute(pool).await?;
            }
            Store::Redis { .. } => {}
        }
        Ok(())
    }

    pub async fn record(&self, job: i64, attempt: u32, latency_us: i64, done_us: i64) -> Result<()> {
        match self {
            Store::Pg(pool) => {
                sqlx::query("INSERT INTO loadtest_completions VALUES ($1, $2, $3, $4)")
                    .bind(job)
                    .bind(attempt as i32)
                    .bind(latency_us)
                    .bind(done_us)
                    .execute(pool)
                    .await?;
            }
            Store::Sqlite(pool) => {
                sqlx::query("INSERT INTO loadtest_completions VALUES (?, ?, ?, ?)")
                    .bind(job)
                    .bind(attempt as i64)
                    .bind(latency_us)
                    .bind(done_us)
                    .execute(pool)
                    .await?;
            }
            Store::Redis { conn, key } => {
                let mut conn = conn.clone();
                redis::cmd("RPUSH")
                    .arg(key)
                    .arg(format!("{job}:{attempt}:{latency_us}:{done_us}"))
                    .query_async::<()>(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn all(&self) -> Result<Vec<Completion>> {
        let rows: Vec<(i64, i64, i64, i64)> = match self {
            Store::Pg(pool) => sqlx::query_as::<_, (i64, i32, i64, i64)>(
                "SELECT job_id, attempt, latency_us, done_us FROM loadtest_completions",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(a, b, c, d)| (a, b as i64, c, d))
            .collect(),
            Store::Sqlite(pool) => {
                sqlx::query_as("SELECT job_id, attempt, latency_us, done_us FROM loadtest_completions")
                    .fetch_all(pool)
                    .await?
            }
            Store::Redis { conn, key } => {
                let mut conn = conn.clone();
                let items: Vec<String> = redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await?;
                items
                    .iter()
                    .filter_map(|s| {
                        let mut it = s.split(':').map(|v| v.parse::<i64>().ok());
                        Some((it.next()??, it.next()??, it.next()??, it.next()??))
                    })
                    .collect()
            }
        };
        Ok(rows
            .into_iter()
            .map(|(job, attempt, latency_us, done_us)| Completion {
                job,
                attempt: attempt as u32,
                latency_us,
                done_us,
            })
            .collect())
    }

    pub async fn close(&self) {
        match self {
            Store::Pg(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
            Store::Redis { .. } => {}
        }
    }
}
