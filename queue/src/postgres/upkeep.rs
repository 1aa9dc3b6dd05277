//! The queue's own table upkeep: VACUUM and ANALYZE of its hot tables when they need it, not
//! when autovacuum gets round to it (or never: it is off on some servers, this one included).
//!
//! Why: a claim turns an `available` row into a `running` one, which leaves a dead entry at the
//! front of the partial `available` index. Every later claim walks those entries before it finds
//! a live row (killed entries are cheap, ~7 ns each, but a million of them are 7 ms a claim) until
//! a VACUUM removes them. Autovacuum's default trigger (20% of the table dead) lets a million-row
//! backlog build 200,000 of them before it starts, and it may start a minute later. The upkeep
//! checks the table's counters every [`UPKEEP_EVERY`] and vacuums once [`UpkeepPolicy`] says so,
//! which keeps the walk short at a fixed cost per claimed job (a VACUUM's work is proportional to
//! the rows that died since the last one, plus one pass over each index).
//!
//! One process at a time (a session advisory lock); a VACUUM that would wait for a lock (another
//! VACUUM, autovacuum's included) gives up after [`LOCK_TIMEOUT`] and tries again next round.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::error::Result;

use super::err;

/// How often the counters are read.
pub(super) const UPKEEP_EVERY: Duration = Duration::from_secs(2);
/// How long a VACUUM or ANALYZE waits for its table lock before giving up for this round.
const LOCK_TIMEOUT: &str = "1s";
/// Advisory lock key (session level): one upkeep at a time across every process on the database.
pub const UPKEEP_LOCK: i64 = 0x726f_756e_6468_6f75; // "roundhou"
/// The tables the upkeep looks after: every claim, ack and prune rewrites rows of these.
const TABLES: [&str; 2] = ["roundhouse_jobs", "roundhouse_pipelines"];

/// A table's counters from `pg_stat_user_tables`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub live: i64,
    pub dead: i64,
    pub modified_since_analyze: i64,
}

/// When a table is due for VACUUM or ANALYZE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpkeepPolicy {
    /// VACUUM once this many dead rows wait (each claimed job leaves two: its `available` and
    /// its `running` version).
    pub vacuum_dead_rows: i64,
    /// ANALYZE once this many rows changed plus this fraction (in percent) of the live rows.
    pub analyze_changed_rows: i64,
    pub analyze_changed_percent: i64,
}

impl Default for UpkeepPolicy {
    /// 50,000 dead rows are a walk of ~0.3 ms a claim; a VACUUM of them on a million-row table
    /// takes ~0.2 s (docs/benchmarks.md, "Deep backlogs on PostgreSQL").
    fn default() -> Self {
        UpkeepPolicy {
            vacuum_dead_rows: 50_000,
            analyze_changed_rows: 10_000,
            analyze_changed_percent: 10,
        }
    }
}

/// What one table needs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upkeep {
    /// VACUUM (which also refreshes the planner's row count) and ANALYZE.
    VacuumAnalyze,
    Analyze,
}

impl UpkeepPolicy {
    pub fn due(&self, counters: TableCounters) -> Option<Upkeep> {
        let analyze_after = self.analyze_changed_rows + counters.live.max(0) * self.analyze_changed_percent / 100;
        if counters.dead >= self.vacuum_dead_rows {
            Some(Upkeep::VacuumAnalyze)
        } else if counters.modified_since_analyze >= analyze_after {
            Some(Upkeep::Analyze)
        } else {
            None
        }
    }
}

/// Runs [`upkeep_once`] every [`UPKEEP_EVERY`] until the task is aborted (the queue dropped).
pub(super) async fn upkeep_loop(pool: PgPool) {
    let policy = UpkeepPolicy::default();
    loop {
        tokio::time::sleep(UPKEEP_EVERY).await;
        if let Err(e) = upkeep_once(&pool, &policy).await {
            tracing::warn!(error = %e, "queue table upkeep failed; trying again later");
        }
    }
}

/// Reads the counters of the queue's tables and vacuums or analyzes those that are due, unless
/// another process is doing the upkeep. Returns what it did.
pub async fn upkeep_once(pool: &PgPool, policy: &UpkeepPolicy) -> Result<Vec<(&'static str, Upkeep)>> {
    let mut due = Vec::new();
    for table in TABLES {
        if let Some(upkeep) = policy.due(counters(pool, table).await?) {
            due.push((table, upkeep));
        }
    }
    if due.is_empty() {
        return Ok(due);
    }
    // VACUUM cannot run in a transaction and session settings must not leak into the pool: a
    // connection of its own, opened only when there is work.
    let options: PgConnectOptions = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("lock_timeout", LOCK_TIMEOUT)]);
    let mut conn = PgConnection::connect_with(&options).await.map_err(err)?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(UPKEEP_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(err)?;
    if !locked {
        let _ = conn.close().await;
        return Ok(Vec::new());
    }
    let mut done = Vec::with_capacity(due.len());
    for (table, upkeep) in due {
        let statement = match upkeep {
            Upkeep::VacuumAnalyze => format!("VACUUM (ANALYZE) {table}"),
            Upkeep::Analyze => format!("ANALYZE {table}"),
        };
        let started = Instant::now();
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await {
            Ok(_) => {
                tracing::debug!(
                    table,
                    ?upkeep,
                    ms = started.elapsed().as_millis() as u64,
                    "queue table upkeep"
                );
                done.push((table, upkeep));
            }
            // 55P03 lock_not_available: autovacuum (or a manual VACUUM) has the table; next round.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                tracing::debug!(table, "queue table busy with another VACUUM; skipped this round");
            }
            Err(e) => {
                let _ = conn.close().await;
                return Err(err(e));
            }
        }
    }
    // Closing the session releases the advisory lock.
    let _ = conn.close().await;
    Ok(done)
}

async fn counters(pool: &PgPool, table: &str) -> Result<TableCounters> {
    let row = sqlx::query(
        "SELECT n_live_tup, n_dead_tup, n_mod_since_analyze FROM pg_stat_user_tables
         WHERE relid = to_regclass($1)",
    )
    .bind(table)
    .fetch_optional(pool)
    .await
    .map_err(err)?;
    let Some(row) = row else {
        return Ok(TableCounters::default());
    };
    Ok(TableCounters {
        live: row.try_get("n_live_tup").map_err(err)?,
        dead: row.try_get("n_dead_tup").map_err(err)?,
        modified_since_analyze: row.try_get("n_mod_since_analyze").map_err(err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(live: i64, dead: i64, modified_since_analyze: i64) -> TableCounters {
        TableCounters {
            live,
            dead,
            modified_since_analyze,
        }
    }

    #[test]
    fn a_table_is_vacuumed_once_enough_rows_died_whatever_its_size() {
        let policy = UpkeepPolicy::default();
        assert_eq!(policy.due(counters(10_000_000, 49_999, 0)), None);
        assert_eq!(policy.due(counters(10_000_000, 50_000, 0)), Some(Upkeep::VacuumAnalyze));
        assert_eq!(policy.due(counters(0, 60_000, 60_000)), Some(Upkeep::VacuumAnalyze));
    }

    #[test]
    fn a_table_is_analyzed_once_a_share_of_it_changed() {
        let policy = UpkeepPolicy::default();
        assert_eq!(policy.due(counters(0, 0, 9_999)), None);
        assert_eq!(policy.due(counters(0, 0, 10_000)), Some(Upkeep::Analyze));
        // A million live rows: 10,000 + 10% of them.
        assert_eq!(policy.due(counters(1_000_000, 0, 109_999)), None);
        assert_eq!(policy.due(counters(1_000_000, 0, 110_000)), Some(Upkeep::Analyze));
    }
}
