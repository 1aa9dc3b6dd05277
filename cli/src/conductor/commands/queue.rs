//! `enclii queue`: the job queue, for operators.

use clap::Subcommand;
use serde_json::Value;

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, items, number, outln, print_rows, printable, rows, table, time};

use super::{Done, project_path};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Depth per kind, project and state, and how long the oldest available job has waited.
    Stats,
    /// Jobs by state, newest first (--project narrows to one project): find one to cancel.
    Jobs {
        /// Comma-separated states: available, running, completed, dead, cancelled
        /// (default: available,running).
        #[arg(long, default_value = "available,running")]
        state: String,
        /// Only jobs of this kind, e.g. build, deploy, job-run.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Dead jobs (attempts exhausted), newest first (--project narrows to one project).
    Dead {
        /// Only jobs of this kind, e.g. build, deploy, job-run.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a dead or cancelled job again.
    Retry {
        /// The job's id (see `queue dead`).
        job: i64,
    },
    /// Cancel a job (a running one is asked to stop).
    Cancel {
        /// The job's id (see `queue jobs`).
        job: i64,
    },
    /// Stop claiming the project's jobs (running ones finish; new ones wait).
    Pause {
        /// The project's slug.
        project: String,
    },
    /// Claim the project's jobs again.
    Resume {
        /// The project's slug.
        project: String,
    },
    /// Worker processes and their heartbeats.
    Workers,
    /// Per-project limits and pauses (projects without any are not listed).
    #[command(visible_alias = "limits")]
    Controls,
    /// Jobs finished per minute, retries, and run and start latency percentiles.
    Throughput {
        /// The window in minutes (1 to 180).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=180))]
        minutes: u32,
    },
}

/// `state`, `kind`, `project` and `limit` of a `/v1/queue/jobs` query.
fn jobs_query(settings: &Settings, state: String, kind: Option<String>, limit: u32) -> Vec<(&'static str, String)> {
    let mut query = vec![("state", state), ("limit", limit.to_string())];
    if let Some(p) = settings.project.clone() {
        query.push(("project", p));
    }
    if let Some(k) = kind {
        query.push(("kind", k));
    }
    query
}

/// What each worker cannot run and why (its `unavailable`), one line per worker and reason:
/// `w-1 cannot run clone, build: no Docker engine at …`.
fn cannot_run(workers: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for worker in items(workers) {
        let Some(unavailable) = worker["unavailable"].as_object() else {
            continue;
        };
        // Kinds in the order the server sent them, grouped by reason.
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for (kind, reason) in unavailable {
            let reason = reason.as_str().unwrap_or("-");
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, kinds)) => kinds.push(kind),
                None => reasons.push((reason, vec![kind])),
            }
        }
        for (reason, kinds) in reasons {
            lines.push(format!(
                "{} cannot run {}: {}",
                cell(&worker["id"]),
                printable(&kinds.join(", ")),
                printable(reason)
            ));
        }
    }
    lines
}

/// Seconds as text with one decimal, `-` when there is no value.
fn secs(value: &Value) -> String {
    match number(value, 1).as_str() {
        "-" => "-".into(),
        n => format!("{n}s"),
    }
}

pub(super) async fn queue(settings: &Settings, command: QueueCommand) -> Done {
    let client = Client::new(settings)?;
    match command {
        QueueCommand::Stats => {
            let stats = client.get("/v1/queue/stats").await?;
            emit(settings.output, &stats, |s| {
                table(
                    &s["depth"],
                    &["kind", "project", "state", "jobs"],
                    &["/kind", "/project", "/state", "/count"],
                );
                let oldest = rows(&s["oldest_available_seconds"], |pair| {
                    vec![cell(&pair[0]), secs(&pair[1])]
                });
                if !oldest.is_empty() {
                    outln!("");
                    print_rows(&["kind", "oldest available"], oldest);
                }
            });
        }
        QueueCommand::Jobs { state, kind, limit } => {
            let jobs = client
                .get_query("/v1/queue/jobs", &jobs_query(settings, state, kind, limit))
                .await?;
            emit(settings.output, &jobs, |j| {
                table(
                    j,
                    &["id", "kind", "project", "state", "attempt", "run at", "worker"],
                    &["/id", "/kind", "/project", "/state", "/attempt", "/run_at", "/worker"],
                )
            });
        }
        QueueCommand::Dead { kind, limit } => {
            let jobs = client
                .get_query("/v1/queue/jobs", &jobs_query(settings, "dead".into(), kind, limit))
                .await?;
            emit(settings.output, &jobs, |j| {
                table(
                    j,
                    &["id", "kind", "project", "attempt", "finished", "error"],
                    &["/id", "/kind", "/project", "/attempt", "/finished_at", "/last_error"],
                )
            });
        }
        QueueCommand::Retry { job } | QueueCommand::Cancel { job } => {
            let action = if matches!(command, QueueCommand::Retry { .. }) {
                "retry"
            } else {
                "cancel"
            };
            let result = client
                .post(&format!("/v1/jobs/{job}/{action}"), &Value::Null)
                .await
                .map_err(|e| match (e.status, action) {
                    (Some(409), "retry") if e.hint.is_none() => {
                        e.hint("only dead or cancelled jobs are retried: see them with `enclii queue dead`")
                    }
                    (Some(404), _) if e.hint.is_none() => {
                        e.hint("see the queue's jobs with `enclii queue jobs --state available,running,dead`")
                    }
                    _ => e,
                })?;
            emit(settings.output, &result, |r| {
                outln!("job {job}: {}", cell(&r["result"]).replace('_', " "))
            });
        }
        QueueCommand::Pause { ref project } | QueueCommand::Resume { ref project } => {
            let action = if matches!(command, QueueCommand::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let result = client
                .post(&format!("{}/queue/{action}", project_path(project)), &Value::Null)
                .await?;
            emit(settings.output, &result, |r| {
                let paused = r["paused"].as_bool().unwrap_or(false);
                outln!("project {project}: queue {}", if paused { "paused" } else { "running" })
            });
        }
        QueueCommand::Workers => {
            let workers = client.get("/v1/queue/workers").await?;
            emit(settings.output, &workers, |w| {
                table(
                    w,
                    &["id", "host", "status", "running", "concurrency", "last seen"],
                    &["/id", "/host", "/status", "/running", "/concurrency", "/last_seen"],
                );
                for line in cannot_run(w) {
                    outln!("{line}");
                }
            });
        }
        QueueCommand::Controls => {
            let controls = client.get("/v1/queue/controls").await?;
            emit(settings.output, &controls, |c| {
                let rows = rows(c, |c| {
                    let limit = |v: &Value| v.as_i64().map_or("unlimited".into(), |n| n.to_string());
                    vec![
                        cell(&c["project"]),
                        if c["paused"].as_bool() == Some(true) {
                            "paused"
                        } else {
                            "running"
                        }
                        .into(),
                        limit(&c["max_running"]),
                        limit(&c["jobs_per_minute"]),
                        time(&c["updated_at"]),
                        cell(&c["updated_by"]),
                    ]
                });
                print_rows(&["project", "queue", "max running", "jobs/min", "updated", "by"], rows);
            });
        }
        QueueCommand::Throughput { minutes } => {
            let report = client
                .get_query("/v1/queue/throughput", &[("minutes", minutes.to_string())])
                .await?;
            emit(settings.output, &report, |r| {
                let rows = rows(&r["buckets"], |b| {
                    vec![
                        time(&b["minute"]),
                        cell(&b["completed"]),
                        cell(&b["dead"]),
                        cell(&b["cancelled"]),
                        cell(&b["retried"]),
                        secs(&b["run_p95_seconds"]),
                        secs(&b["start_p95_seconds"]),
                    ]
                });
                print_rows(
                    &[
                        "minute",
                        "completed",
                        "dead",
                        "cancelled",
                        "retried",
                        "run p95",
                        "start p95",
                    ],
                    rows,
                );
                outln!(
                    "last {} min: run p50 {} p95 {}, start p50 {} p95 {}{}",
                    cell(&r["minutes"]),
                    secs(&r["run_p50_seconds"]),
                    secs(&r["run_p95_seconds"]),
                    secs(&r["start_p50_seconds"]),
                    secs(&r["start_p95_seconds"]),
                    if r["truncated"].as_bool() == Some(true) {
                        " (more jobs than were read: counts are a lower bound)"
                    } else {
                        ""
                    }
                );
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workers_say_what_they_cannot_run_grouped_by_reason() {
        let workers = json!([
            {"id": "w-1", "unavailable": {"build": "no Docker engine", "clone": "no Docker engine",
                                          "deploy": "no deploy target"}},
            {"id": "w-2", "unavailable": {}},
            {"id": "w-3"},
        ]);
        assert_eq!(
            cannot_run(&workers),
            [
                "w-1 cannot run build, clone: no Docker engine",
                "w-1 cannot run deploy: no deploy target"
            ]
        );
    }
}
