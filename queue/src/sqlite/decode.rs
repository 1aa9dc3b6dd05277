//! Values to and from columns (times as epoch milliseconds, JSON lists) and reading rows: claimed
//! jobs, job records, policies, payloads.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::error::{QueueError, Result};
use crate::job::{Ack, ClaimedJob, JobPolicy, JobRecord, Lease, Outcome};

use super::err;

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn time(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

pub(super) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(super) fn parse_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| QueueError::Corrupt(format!("bad JSON list {text:?}: {e}")))
}

pub(super) fn policy(row: &SqliteRow) -> Result<JobPolicy> {
    Ok(JobPolicy::from_stored(
        row.try_get("priority").map_err(err)?,
        row.try_get("max_attempts").map_err(err)?,
        row.try_get("timeout_ms").map_err(err)?,
        row.try_get("backoff_base_ms").map_err(err)?,
        row.try_get("backoff_max_ms").map_err(err)?,
    ))
}

pub(super) fn payload(row: &SqliteRow) -> Result<serde_json::Value> {
    let text: String = row.try_get("payload").map_err(err)?;
    serde_json::from_str(&text).map_err(|e| QueueError::Corrupt(format!("stored payload is not JSON: {e}")))
}

pub(super) fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(column).map_err(err)?.map(time))
}

pub(super) fn claimed(row: &SqliteRow) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload: payload(row)?,
        attempt: row.try_get::<i64, _>("attempt").map_err(err)? as u32,
        lease_token: row.try_get::<i64, _>("claims").map_err(err)? as u32,
        policy: policy(row)?,
        created_at: time(row.try_get("created_at").map_err(err)?),
        run_at: time(row.try_get("run_at").map_err(err)?),
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
    })
}

/// A claimed row that cannot be read (e.g. a payload that is not JSON, written around the
/// queue) is dead-lettered with the reason, instead of failing every claim after it.
pub(super) fn dead_letter(row: &SqliteRow, problem: QueueError) -> Result<Ack> {
    let id: i64 = row.try_get("id").map_err(err)?;
    tracing::error!(job = id, error = %problem, "dead-lettering a job whose stored row cannot be read");
    Ok(Ack {
        lease: Lease {
            job: id,
            token: row.try_get::<i64, _>("claims").map_err(err)? as u32,
        },
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        outcome: Outcome::Dead {
            error: format!("{problem}; fix or re-enqueue the job"),
        },
    })
}

pub(super) fn record(row: &SqliteRow) -> Result<JobRecord> {
    // Operators must be able to inspect a dead-lettered job whose payload is not JSON.
    let payload = payload(row).or_else(|_| {
        Ok::<_, QueueError>(serde_json::json!({ "corrupt_payload": row.try_get::<String, _>("payload").map_err(err)? }))
    })?;
    Ok(JobRecord {
        id: row.try_get("id").map_err(err)?,
        kind: row.try_get("kind").map_err(err)?,
        project: row.try_get("project").map_err(err)?,
        payload,
        state: row.try_get::<String, _>("state").map_err(err)?.parse()?,
        attempt: row.try_get::<i64, _>("attempt").map_err(err)? as u32,
        policy: policy(row)?,
        run_at: time(row.try_get("run_at").map_err(err)?),
        created_at: time(row.try_get("created_at").map_err(err)?),
        attempted_at: opt_time(row, "attempted_at")?,
        finished_at: opt_time(row, "finished_at")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        worker: row.try_get("worker_id").map_err(err)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested").map_err(err)? != 0,
        unique_key: row.try_get("unique_key").map_err(err)?,
        pipeline: row.try_get("pipeline_id").map_err(err)?,
        step: row.try_get("step").map_err(err)?,
        last_error: row.try_get("last_error").map_err(err)?,
    })
}
