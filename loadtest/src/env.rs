//! A fresh, disposable queue store per run: a new PostgreSQL database, a new SQLite file, or a new
//! Redis key prefix, removed again at the end.

use std::sync::Arc;

use anyhow::{Context, Result};
use enclii_queue::Backend;
use sqlx::Connection;

use crate::BackendKind;

pub const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where one run keeps its queue.
pub struct Env {
    pub kind: BackendKind,
    /// The queue URL workers and producers open.
    pub url: String,
    /// Redis key prefix of this run, without the `:` (empty for the SQL backends).
    pub prefix: String,
    cleanup: Cleanup,
}

enum Cleanup {
    None,
    DropDatabase { admin_url: String, name: String },
    RemoveFile(std::path::PathBuf),
    DeletePrefix,
}

fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl Env {
    /// PostgreSQL: `url` names the server (any database on it, default the `postgres` one); a
    /// database `loadtest_<random>` is created there. SQLite: `url` is used as is when given (and
    /// kept), else a temp file. Redis: `url` names the server; keys go under `loadtest_<random>:`.
    pub async fn create(kind: BackendKind, url: Option<&str>) -> Result<Env> {
        let id = run_id();
        match kind {
            BackendKind::Postgres => {
                let admin_url = url.unwrap_or(DEFAULT_PG_ADMIN_URL).to_string();
                let name = format!("loadtest_{id}");
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .context("connecting to PostgreSQL to create the run's database")?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("CREATE DATABASE {name}"))?;
                let _ = conn.close().await;
                Ok(Env {
                    kind,
                    url: with_database(&admin_url, &name),
                    prefix: String::new(),
                    cleanup: Cleanup::DropDatabase { admin_url, name },
                })
            }
            BackendKind::Sqlite => match url {
                Some(url) => Ok(Env {
                    kind,
                    url: url.to_string(),
                    prefix: String::new(),
                    cleanup: Cleanup::None,
                }),
                None => {
                    let path = std::env::temp_dir().join(format!("loadtest-{id}.db"));
                    Ok(Env {
                        kind,
                        url: format!("sqlite://{}", path.display()),
                        prefix: String::new(),
                        cleanup: Cleanup::RemoveFile(path),
                    })
                }
            },
            BackendKind::Redis => Ok(Env {
                kind,
                url: url.unwrap_or(DEFAULT_REDIS_URL).to_string(),
                prefix: format!("loadtest_{id}"),
                cleanup: Cleanup::DeletePrefix,
            }),
        }
    }

    pub async fn open(&self, max_conns: u32) -> Result<Arc<dyn Backend>> {
        open_backend(self.kind, &self.url, &self.prefix, max_conns).await
    }

    /// Removes what `create` made. Best effort: failures are logged, not returned.
    pub async fn destroy(self) {
        let result: Result<()> = async {
            match &self.cleanup {
                Cleanup::None => {}
                Cleanup::DropDatabase { admin_url, name } => {
                    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await?;
                    let _ = conn.close().await;
                }
                Cleanup::RemoveFile(path) => {
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let mut p = path.clone().into_os_string();
                        p.push(suffix);
                        let _ = std::fs::remove_file(p);
                    }
                }
                Cleanup::DeletePrefix => {
                    let client = redis::Client::open(self.url.as_str())?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    let pattern = format!("{}:*", self.prefix);
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn)
                            .await?;
                        if !keys.is_empty() {
                            redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut conn).await?;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cleaning up the run's queue store failed");
        }
    }
}

/// `postgres://user@host:port/olddb?x=y` → `postgres://user@host:port/NAME?x=y`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Opens the queue of a backend.
pub async fn open_backend(kind: BackendKind, url: &str, prefix: &str, max_conns: u32) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Redis => open_redis(url, prefix).await,
        _ => Ok(enclii_queue::open(url, max_conns).await?),
    }
}

/// Opens the Redis queue with all its keys under `{prefix}:`.
async fn open_redis(url: &str, prefix: &str) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        enclii_queue::redis::RedisQueue::connect_with_prefix(url, prefix).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_swapped_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "x"), "postgres://h:5432/x");
    }
}
