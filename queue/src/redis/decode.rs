//! Reading script replies and stored fields.

use ::redis::Value;
use chrono::{DateTime, Utc};

use crate::error::{QueueError, Result};
use crate::job::{JobId, JobPolicy};

pub(super) fn corrupt(message: impl Into<String>) -> QueueError {
    QueueError::Corrupt(message.into())
}

pub(super) fn array(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt(format!("{what}: expected an array from Redis"))),
    }
}

pub(super) fn opt_string(v: Value) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| corrupt("a stored string is not UTF-8")),
        Value::SimpleString(s) => Ok(Some(s)),
        Value::Int(i) => Ok(Some(i.to_string())),
        Value::Double(d) => Ok(Some(d.to_string())),
        Value::Okay => Ok(Some("OK".into())),
        // Scripts return Lua `false` for absent fields: RESP2 nil, RESP3 boolean false.
        Value::Boolean(false) => Ok(None),
        Value::Boolean(true) => Ok(Some("1".into())),
        _ => Err(corrupt("unexpected nested value from Redis")),
    }
}

pub(super) fn strings(v: Value, what: &str) -> Result<Vec<Option<String>>> {
    array(v, what)?.into_iter().map(opt_string).collect()
}

/// A stored integer; empty means absent.
pub(super) fn opt_int(v: &Option<String>, what: &str) -> Result<Option<i64>> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| Some(f as i64))
                .ok_or_else(|| corrupt(format!("{what} is not a number"))),
        },
    }
}

pub(super) fn int(v: &Option<String>, what: &str) -> Result<i64> {
    opt_int(v, what)?.ok_or_else(|| corrupt(format!("{what} is missing")))
}

pub(super) fn req(v: Option<String>, what: &str) -> Result<String> {
    v.ok_or_else(|| corrupt(format!("{what} is missing")))
}

pub(super) fn ms_time(ms: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("{what} is out of range")))
}

pub(super) fn opt_time(v: &Option<String>, what: &str) -> Result<Option<DateTime<Utc>>> {
    opt_int(v, what)?.map(|ms| ms_time(ms, what)).transpose()
}

pub(super) fn payload(v: Option<String>, id: JobId) -> Result<serde_json::Value> {
    let text = req(v, "payload")?;
    serde_json::from_str(&text).map_err(|_| corrupt(format!("job {id} has an unreadable payload")))
}

/// A job's policy as stored: `priority:max_attempts:timeout_ms:backoff_base_ms:backoff_max_ms`.
pub(super) fn policy_text(policy: &JobPolicy) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        policy.priority,
        policy.max_attempts,
        policy.timeout_ms(),
        policy.backoff.base.as_millis(),
        policy.backoff.max.as_millis()
    )
}

pub(super) fn policy_of(v: &Option<String>) -> Result<JobPolicy> {
    let text = v.as_deref().ok_or_else(|| corrupt("policy is missing"))?;
    let mut parts = text.split(':').map(|p| p.parse::<i64>());
    let mut next = || match parts.next() {
        Some(Ok(n)) => Ok(n),
        _ => Err(corrupt("policy is unreadable")),
    };
    Ok(JobPolicy::from_stored(next()?, next()?, next()?, next()?, next()?))
}

pub(super) fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

pub(super) fn tag(v: &[Option<String>]) -> &str {
    v.first().and_then(|s| s.as_deref()).unwrap_or_default()
}
