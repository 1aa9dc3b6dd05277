//! Operators' reads and controls: one job, job lists, pipelines, stats, limits, cancel and retry.

use ::redis::Value;

use crate::backend::{CancelOutcome, DepthRow, JobFilter, ProjectLimits, QueueStats};
use crate::error::{QueueError, Result};
use crate::job::{JobId, JobRecord, JobState, PipelineId};
use crate::pipeline::{PipelineRecord, StepRecord};

use super::decode::*;
use super::{LIST_PAGE, LIST_SCAN_WINDOW, RedisQueue};

impl RedisQueue {
    pub(super) async fn cancel_job(&self, id: JobId) -> Result<CancelOutcome> {
        let v: Value = self
            .scripts
            .cancel
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "cancel reply")?;
        match tag(&f) {
            "missing" => Err(QueueError::JobNotFound(id)),
            "requested" => Ok(CancelOutcome::Requested),
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "finished" => Ok(CancelOutcome::AlreadyFinished(
                req(f.get(1).cloned().flatten(), "state")?.parse()?,
            )),
            _ => Err(corrupt(format!("job {id} is in an unknown state"))),
        }
    }

    pub(super) async fn retry_job(&self, id: JobId) -> Result<()> {
        let v: Value = self
            .scripts
            .retry
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "retry reply")?;
        match tag(&f) {
            "ok" => Ok(()),
            "missing" => Err(QueueError::JobNotFound(id)),
            "superseded" => Err(QueueError::SupersededPipeline {
                id,
                pipeline: int(f.get(1).unwrap_or(&None), "pipeline id")?,
            }),
            "state" => Err(QueueError::NotRetryable {
                id,
                state: req(f.get(1).cloned().flatten(), "state")?.parse()?,
            }),
            _ => Err(corrupt("retry reply has the wrong shape")),
        }
    }

    pub(super) async fn read_job(&self, id: JobId) -> Result<Option<JobRecord>> {
        let v: Value = ::redis::cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&JOB_FIELDS[..])
            .query_async(&mut self.con())
            .await?;
        let f = strings(v, "job")?;
        if f.get(3).is_none_or(|s| s.is_none()) {
            return Ok(None);
        }
        record(id, f).map(Some)
    }

    pub(super) async fn list_matching_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        // No index per state or finish time exists (the scripts keep only what claims need), so
        // walk ids downwards from the newest, a page per round trip, within a bounded window.
        let newest: Option<i64> = ::redis::cmd("GET")
            .arg(format!("{}:seq", self.prefix))
            .query_async(&mut self.con())
            .await?;
        let mut found = Vec::new();
        let mut high = newest.unwrap_or(0);
        let floor = (high - LIST_SCAN_WINDOW).max(0);
        while high > floor && found.len() < filter.limit {
            let low = (high - LIST_PAGE).max(floor);
            let mut pipe = ::redis::pipe();
            for id in (low + 1..=high).rev() {
                pipe.cmd("HMGET").arg(self.job_key(id)).arg(&JOB_FIELDS[..]);
            }
            let replies: Vec<Value> = pipe.query_async(&mut self.con()).await?;
            for (id, reply) in (low + 1..=high).rev().zip(replies) {
                let f = strings(reply, "job")?;
                if f.get(3).is_none_or(|s| s.is_none()) {
                    continue; // pruned
                }
                let job = record(id, f)?;
                if filter.matches(&job) {
                    found.push(job);
                    if found.len() == filter.limit {
                        break;
                    }
                }
            }
            high = low;
        }
        Ok(found)
    }

    pub(super) async fn read_pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        let v: Value = self
            .scripts
            .pipeline_read
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        if matches!(v, Value::Nil | Value::Boolean(false)) {
            return Ok(None);
        }
        let mut parts = array(v, "pipeline reply")?.into_iter();
        let head = strings(parts.next().unwrap_or(Value::Nil), "pipeline")?;
        if head.len() != 6 {
            return Err(corrupt(format!("pipeline {id} reply has the wrong shape")));
        }
        let mut steps = Vec::new();
        for row in array(parts.next().unwrap_or(Value::Nil), "pipeline steps")? {
            let s = strings(row, "pipeline step")?;
            if s.len() != 7 {
                return Err(corrupt(format!("pipeline {id} step has the wrong shape")));
            }
            let job = int(&s[0], "job id")?;
            let needs: Vec<String> = match s[5].as_deref() {
                None | Some("") => Vec::new(),
                Some(json) => {
                    serde_json::from_str(json).map_err(|_| corrupt(format!("job {job} has unreadable needs")))?
                }
            };
            let mut s = s;
            steps.push(StepRecord {
                name: s[1].take().unwrap_or_default(),
                job,
                kind: req(s[2].take(), "kind")?,
                state: req(s[3].take(), "state")?.parse()?,
                attempt: int(&s[4], "attempt")?.max(0) as u32,
                needs,
                last_error: s[6].take(),
            });
        }
        steps.sort_by_key(|s| s.job);
        let mut head = head;
        Ok(Some(PipelineRecord {
            id,
            project: req(head[0].take(), "project")?,
            name: req(head[1].take(), "name")?,
            state: req(head[2].take(), "state")?.parse()?,
            supersede_key: head[3].take(),
            created_at: ms_time(int(&head[4], "created_at")?, "created_at")?,
            finished_at: opt_time(&head[5], "finished_at")?,
            steps,
        }))
    }

    pub(super) async fn read_stats(&self) -> Result<QueueStats> {
        let v: Value = self
            .scripts
            .stats
            .prepare_invoke()
            .arg(&self.prefix)
            .invoke_async(&mut self.con())
            .await?;
        let mut parts = array(v, "stats reply")?.into_iter();
        let now_ms = int(&opt_string(parts.next().unwrap_or(Value::Nil))?, "server time")?;
        let depth_raw = strings(parts.next().unwrap_or(Value::Nil), "depth")?;
        let oldest_raw = strings(parts.next().unwrap_or(Value::Nil), "oldest")?;
        let mut depth = Vec::with_capacity(depth_raw.len() / 2);
        for pair in depth_raw.chunks(2) {
            let field = pair[0].as_deref().ok_or_else(|| corrupt("empty depth counter"))?;
            let count = int(pair.get(1).unwrap_or(&None), "depth count")?;
            if count <= 0 {
                continue;
            }
            let (state, kind, project) = depth_field(field)?;
            depth.push(DepthRow {
                kind,
                project,
                state,
                count: count as u64,
            });
        }
        depth.sort_by(|a, b| (&a.kind, &a.project, a.state).cmp(&(&b.kind, &b.project, b.state)));
        let mut oldest_available_seconds = Vec::with_capacity(oldest_raw.len() / 2);
        for pair in oldest_raw.chunks(2) {
            let kind = pair[0].clone().ok_or_else(|| corrupt("empty kind"))?;
            let at = int(pair.get(1).unwrap_or(&None), "oldest run_at")?;
            oldest_available_seconds.push((kind, ((now_ms - at) as f64 / 1000.0).max(0.0)));
        }
        oldest_available_seconds.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(QueueStats {
            depth,
            oldest_available_seconds,
        })
    }

    pub(super) async fn write_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
        let _: Value = self
            .scripts
            .set_limits
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(project)
            .arg(limits.max_running.map(|v| v.to_string()).unwrap_or_default())
            .arg(limits.jobs_per_minute.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async(&mut self.con())
            .await?;
        Ok(())
    }
}

const JOB_FIELDS: [&str; 17] = [
    "kind",
    "project",
    "payload",
    "state",
    "policy",
    "attempt",
    "run_at_ms",
    "created_at_ms",
    "attempted_at_ms",
    "finished_at_ms",
    "lease_expires_at_ms",
    "worker",
    "cancel_requested",
    "unique_key",
    "pipeline",
    "step",
    "last_error",
];

fn record(id: JobId, mut f: Vec<Option<String>>) -> Result<JobRecord> {
    if f.len() != JOB_FIELDS.len() {
        return Err(corrupt("job reply has the wrong shape"));
    }
    let state: JobState = req(f[3].take(), "state")?.parse()?;
    // The worker and lease of a job are kept after it stops running; they only count while it runs.
    let running = state == JobState::Running;
    Ok(JobRecord {
        id,
        kind: req(f[0].take(), "kind")?,
        project: req(f[1].take(), "project")?,
        // Operators must be able to inspect a dead-lettered job whose payload is not JSON.
        payload: {
            let raw = f[2].take();
            payload(raw.clone(), id).unwrap_or_else(|_| serde_json::json!({ "corrupt_payload": raw }))
        },
        state,
        attempt: int(&f[5], "attempt")?.max(0) as u32,
        policy: policy_of(&f[4])?,
        run_at: ms_time(int(&f[6], "run_at")?, "run_at")?,
        created_at: ms_time(int(&f[7], "created_at")?, "created_at")?,
        attempted_at: opt_time(&f[8], "attempted_at")?,
        finished_at: opt_time(&f[9], "finished_at")?,
        lease_expires_at: if running {
            opt_time(&f[10], "lease_expires_at")?
        } else {
            None
        },
        worker: if running { non_empty(f[11].take()) } else { None },
        cancel_requested: f[12].as_deref() == Some("1"),
        unique_key: f[13].take(),
        pipeline: opt_int(&f[14], "pipeline")?,
        step: non_empty(f[15].take()),
        last_error: f[16].take(),
    })
}

/// Parses a depth field: `{state}:{len(kind)}:{kind}{project}`.
fn depth_field(field: &str) -> Result<(JobState, String, String)> {
    let bad = || corrupt("unreadable depth counter");
    let (state, rest) = field.split_once(':').ok_or_else(bad)?;
    let (len, rest) = rest.split_once(':').ok_or_else(bad)?;
    let len: usize = len.parse().map_err(|_| bad())?;
    if !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
        return Err(bad());
    }
    let (kind, project) = rest.split_at(len);
    Ok((state.parse()?, kind.to_string(), project.to_string()))
}
