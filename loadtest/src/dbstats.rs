//! What a run costs the database: the CPU of the database server's processes, and the size of
//! the queue's storage (PostgreSQL: the jobs table and each of its indexes; Redis: the server's
//! memory; SQLite: the database file and its WAL).

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::BackendKind;
use crate::env::Env;
use crate::meter::round3;

/// The database server's process tree, found through the run's own connection: PostgreSQL's
/// postmaster (the parent of this run's backend), Redis's `process_id`. SQLite runs in-process:
/// no server to meter.
pub struct DbCpu {
    root: Option<u32>,
}

impl DbCpu {
    pub async fn find(env: &Env) -> DbCpu {
        let root = match env.kind {
            BackendKind::Postgres => postmaster(&env.url).await,
            BackendKind::Redis => redis_pid(&env.url).await,
            BackendKind::Sqlite => None,
        };
        if root.is_none() && env.kind != BackendKind::Sqlite {
            tracing::warn!("the database server's process was not found; its CPU is not reported");
        }
        DbCpu { root }
    }

    /// CPU seconds so far of the server: its main process, its live children, and the children it
    /// has reaped (PostgreSQL's finished backends). `None` when the server is not on this machine.
    pub fn cpu_s(&self) -> Option<f64> {
        let root = self.root?;
        let (own, reaped, _) = stat_ticks(&root.to_string())?;
        let mut ticks = own + reaped;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
                continue;
            };
            if let Some((own, _, ppid)) = stat_ticks(pid)
                && ppid == root
            {
                ticks += own;
            }
        }
        Some(round3(ticks as f64 / 100.0)) // USER_HZ on Linux
    }
}

/// (utime + stime, cutime + cstime, ppid) of a process, in clock ticks.
fn stat_ticks(pid: &str) -> Option<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (0), ppid (1), … utime (11), stime (12), cutime (13), cstime (14).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((num(11)? + num(12)?, num(13)? + num(14)?, num(1)? as u32))
}

async fn postmaster(url: &str) -> Option<u32> {
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let ppid = stat_ticks(&backend.to_string()).map(|(_, _, ppid)| ppid);
    let _ = conn.close().await;
    ppid
}

async fn redis_pid(url: &str) -> Option<u32> {
    let info = redis_info(url, "server").await.ok()?;
    info_field(&info, "process_id")?.parse().ok()
}

async fn redis_info(url: &str, section: &str) -> Result<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("INFO").arg(section).query_async(&mut conn).await?)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The queue's storage now. PostgreSQL: `pg_total_relation_size` and `pg_relation_size` of
/// `roundhouse_jobs`, each index's size, and the live/dead tuple estimates; Redis: the server's
/// `used_memory` and key count (the whole server, which others may share); SQLite: file sizes.
pub async fn sizes(env: &Env) -> Result<Value> {
    match env.kind {
        BackendKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&env.url).await?;
            let row = sqlx::query(
                "SELECT pg_total_relation_size('roundhouse_jobs') AS total, pg_relation_size('roundhouse_jobs') AS heap,
                        (SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'roundhouse_jobs') AS live,
                        (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'roundhouse_jobs') AS dead",
            )
            .fetch_one(&mut conn)
            .await
            .context("reading the jobs table's size")?;
            let mut indexes = serde_json::Map::new();
            for index in sqlx::query(
                "SELECT c.relname::text AS name, pg_relation_size(c.oid) AS bytes
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'roundhouse_jobs'::regclass ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await?
            {
                indexes.insert(index.try_get("name")?, json!(index.try_get::<i64, _>("bytes")?));
            }
            let _ = conn.close().await;
            Ok(json!({
                "jobs_total_bytes": row.try_get::<i64, _>("total")?,
                "jobs_heap_bytes": row.try_get::<i64, _>("heap")?,
                "jobs_live_tuples": row.try_get::<Option<i64>, _>("live")?,
                "jobs_dead_tuples": row.try_get::<Option<i64>, _>("dead")?,
                "index_bytes": indexes,
            }))
        }
        BackendKind::Redis => {
            let memory = redis_info(&env.url, "memory").await?;
            let keyspace = redis_info(&env.url, "keyspace").await?;
            let number = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
            Ok(json!({
                "used_memory_bytes": number(info_field(&memory, "used_memory")),
                "keyspace": info_field(&keyspace, "db0"),
                "scope": "the whole Redis server (shared)",
            }))
        }
        BackendKind::Sqlite => {
            let path = env.url.strip_prefix("sqlite://").unwrap_or(&env.url);
            let path = path.split('?').next().unwrap_or(path);
            let size = |suffix: &str| std::fs::metadata(format!("{path}{suffix}")).ok().map(|m| m.len());
            Ok(json!({ "db_bytes": size(""), "wal_bytes": size("-wal") }))
        }
    }
}

/// PostgreSQL's `autovacuum` setting, recorded with each run.
pub async fn autovacuum(env: &Env) -> Option<String> {
    if env.kind != BackendKind::Postgres {
        return None;
    }
    let mut conn = sqlx::PgConnection::connect(&env.url).await.ok()?;
    let on: Option<String> = sqlx::query_scalar("SHOW autovacuum").fetch_one(&mut conn).await.ok();
    let _ = conn.close().await;
    on
}

/// CPU seconds between two readings, and per job in µs.
pub fn cpu_fields(prefix: &str, from: Option<f64>, to: Option<f64>, jobs: u64, seconds: f64) -> Value {
    let spent = from.zip(to).map(|(a, b)| round3(b - a));
    json!({
        format!("{prefix}_cpu_s"): spent,
        format!("{prefix}_cpu_us_per_job"): spent.filter(|_| jobs > 0).map(|s| round3(s * 1e6 / jobs as f64)),
        format!("{prefix}_cpu_cores"): spent.filter(|_| seconds > 0.0).map(|s| round3(s / seconds)),
    })
}
