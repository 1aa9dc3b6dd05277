//! `chaos`'s check of the cut: the worker cut off from the database must notice that it can no
//! longer renew its leases and stop its jobs *before* another worker claims them (else one job
//! would run in two places at once). Read from the cut worker's JSON log (the pool's warnings and
//! its debug line when an attempt ends, each with the job's span) against the claim times the
//! fault watched in the queue.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::chaos_faults::CutRecord;

const STOP_ALL: &str = "leases could not be renewed in time; stopping all running jobs";
const LEASE_LOST: &str = "lease lost (rescued elsewhere or heartbeats failed); stopped without acknowledging";
const ATTEMPT_ENDED: [&str; 2] = ["attempt ended", "attempt failed"];

/// What the cut worker's log says after the cut began.
#[derive(Default)]
struct Seen {
    stop_all: Option<DateTime<Utc>>,
    /// job id → when the pool stopped it.
    stopped: BTreeMap<i64, DateTime<Utc>>,
    /// job id → when attempts of it ended on the cut worker (ran to their end there), in order.
    ended: BTreeMap<i64, Vec<(DateTime<Utc>, String)>>,
}

fn job_id(line: &Value) -> Option<i64> {
    line["span"]["job_id"]
        .as_i64()
        .or_else(|| line["spans"].as_array()?.iter().find(|s| s["name"] == "job")?["job_id"].as_i64())
}

fn read_log(path: &Path, from: DateTime<Utc>) -> Seen {
    let mut seen = Seen::default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let Ok(line) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(at) = line["timestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        if at < from {
            continue;
        }
        let message = line["fields"]["message"].as_str().unwrap_or("");
        if message == STOP_ALL {
            seen.stop_all.get_or_insert(at);
        } else if message == LEASE_LOST {
            if let Some(id) = job_id(&line) {
                seen.stopped.entry(id).or_insert(at);
            }
        } else if ATTEMPT_ENDED.contains(&message)
            && let Some(id) = job_id(&line)
        {
            let state = line["fields"]["state"].as_str().unwrap_or("").to_string();
            seen.ended.entry(id).or_default().push((at, state));
        }
    }
    seen
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds()
}

/// The check `cut_worker_stopped_its_jobs_before_they_were_taken`.
pub fn check(record: &CutRecord, log: &Path) -> Value {
    let (Some(from), Some(to)) = (record.from, record.to) else {
        return json!({"name": "cut_worker_stopped_its_jobs_before_they_were_taken", "ok": null,
                      "detail": "the cut did not happen"});
    };
    // From when the held jobs were listed: one may have ended just before the link was cut.
    let seen = read_log(log, record.listed.unwrap_or(from));
    let taken = record.taken.lock().expect("takes").clone();
    let mut jobs = Vec::new();
    let mut bad = 0;
    let mut margins = Vec::new();
    for (id, kind) in &record.held {
        let stopped = seen.stopped.get(id).copied();
        // An attempt that ended on the cut worker before the link came back ran to its end
        // there; one that ended after it was the cut worker's own new claim.
        let attempts = seen.ended.get(id).cloned().unwrap_or_default();
        let ended = attempts.iter().find(|(at, _)| *at < to).cloned();
        let reclaimed_here = attempts.iter().any(|(at, _)| *at >= to);
        let take = taken.get(id).copied();
        let by_other = take.filter(|t| t.pid.is_some_and(|p| p != record.pid) || (t.pid.is_none() && !reclaimed_here));
        let verdict = match (stopped, &ended, by_other) {
            (Some(stop), _, Some(t)) if stop < t.at => {
                if t.exact {
                    margins.push(ms(stop, t.at));
                    "stopped before taken"
                } else {
                    "stopped before its last claim (seen finished)"
                }
            }
            (Some(_), _, Some(_)) => "taken before stopped",
            // Ran to its end on the cut worker (its ack waited for the link) and ran again
            // elsewhere: a double run, which matters for pushes and deploys.
            (None, Some(_), Some(_)) => "ended here, then taken",
            (None, None, Some(_)) => "taken, no stop logged",
            (Some(_), _, None) if take.is_some() => "stopped, then claimed again by the cut worker",
            (Some(_), _, None) => "stopped, not claimed again",
            (None, Some(_), None) => "ended here",
            (None, None, None) => "no stop logged, not taken",
        };
        let is_bad = match verdict {
            "taken before stopped" | "taken, no stop logged" => true,
            "ended here, then taken" => matches!(kind.as_str(), "push" | "deploy"),
            _ => false,
        };
        bad += usize::from(is_bad);
        jobs.push(json!({"job": id, "kind": kind, "verdict": verdict,
            "stopped_after_cut_ms": stopped.map(|t| ms(from, t)),
            "ended_after_cut_ms": ended.as_ref().map(|(t, _)| ms(from, *t)), "ended_state": ended.map(|(_, s)| s),
            "claimed_again_after_cut_ms": take.map(|t| ms(from, t.at)), "claimed_by_pid": take.and_then(|t| t.pid),
            "claim_seen_running": take.map(|t| t.exact)}));
    }
    margins.sort();
    let logged = seen.stop_all.is_some();
    json!({
        "name": "cut_worker_stopped_its_jobs_before_they_were_taken",
        "ok": logged && bad == 0 && !record.held.is_empty(),
        "detail": {
            "worker": format!("worker{} (pid {})", record.slot, record.pid),
            "cut_ms": ms(from, to),
            "stop_all_logged_after_cut_ms": seen.stop_all.map(|t| ms(from, t)),
            "held": record.held.len(), "taken_by_others": margins.len(), "bad": bad,
            "min_stop_before_take_ms": margins.first(), "max_stop_before_take_ms": margins.last(),
            "jobs": jobs,
        }
    })
}
