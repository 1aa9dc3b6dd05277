//! Acknowledgements: each batch, with the pipeline effects of its acks, is one script call.

use std::collections::HashMap;

use ::redis::{ScriptInvocation, Value};

use crate::error::{QueueError, Result};
use crate::job::{Ack, JobId, JobState, Outcome, PipelineId};
use crate::progress::{AckedRow, Progress};

use super::decode::*;
use super::{ACK_CHUNK, RedisQueue};

/// The pipeline data of an acknowledged job, fetched before its ack is applied.
struct AckMeta {
    pipeline: Option<PipelineId>,
    step: Option<String>,
    dependents: Vec<String>,
}

impl RedisQueue {
    async fn fetch_meta(&self, ids: &[JobId]) -> Result<HashMap<JobId, AckMeta>> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.job_key(*id))
                .arg("pipeline")
                .arg("step")
                .arg("dependents");
        }
        let rows: Vec<Value> = pipe.query_async(&mut self.con()).await?;
        for (id, row) in ids.iter().zip(rows) {
            let mut f = strings(row, "job pipeline data")?.into_iter();
            let pipeline = opt_int(&f.next().flatten(), "pipeline")?;
            let step = f.next().flatten();
            let dependents = match f.next().flatten() {
                Some(json) if pipeline.is_some() => serde_json::from_str(&json)
                    .map_err(|_| QueueError::Corrupt(format!("job {id} has unreadable dependents")))?,
                _ => Vec::new(),
            };
            out.insert(
                *id,
                AckMeta {
                    pipeline,
                    step,
                    dependents,
                },
            );
        }
        Ok(out)
    }

    /// Applies finished attempts and moves their pipelines on, in one script per chunk. With
    /// `expired_only`, only jobs whose lease has run out are touched (the reaper's path).
    pub(super) async fn apply_acks(&self, acks: &[Ack], expired_only: bool) -> Result<()> {
        for chunk in acks.chunks(ACK_CHUNK) {
            let hinted: Vec<JobId> = chunk
                .iter()
                .filter(|a| a.pipeline.is_some())
                .map(|a| a.lease.job)
                .collect();
            let mut meta = self.fetch_meta(&hinted).await?;
            let deferred = self.run_ack_script(chunk, &meta, expired_only).await?;
            if deferred.is_empty() {
                continue;
            }
            // Acks that did not say their job belongs to a pipeline, but it does.
            meta.extend(self.fetch_meta(&deferred).await?);
            let again: Vec<Ack> = chunk
                .iter()
                .filter(|a| deferred.contains(&a.lease.job))
                .cloned()
                .collect();
            let left = self.run_ack_script(&again, &meta, expired_only).await?;
            if !left.is_empty() {
                return Err(QueueError::Corrupt(format!(
                    "jobs {left:?} changed pipeline while being acknowledged"
                )));
            }
        }
        Ok(())
    }

    async fn run_ack_script(
        &self,
        acks: &[Ack],
        meta: &HashMap<JobId, AckMeta>,
        expired_only: bool,
    ) -> Result<Vec<JobId>> {
        if acks.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.ack.prepare_invoke();
        inv.arg(&self.prefix).arg(if expired_only { "1" } else { "0" });
        for ack in acks {
            push_ack(&mut inv, ack, meta.get(&ack.lease.job));
        }
        let deferred: Value = inv.invoke_async(&mut self.con()).await?;
        array(deferred, "ack reply")?
            .into_iter()
            .map(|v| int(&opt_string(v)?, "deferred id"))
            .collect()
    }
}

/// Adds one ack's arguments; its pipeline effects come from [`Progress::of`] on the row the ack
/// will leave, and the script applies them only if the ack applies. A retry or a hand-back also
/// carries the effects of the job ending cancelled, which the script applies instead when the
/// job's cancellation was requested while it ran.
fn push_ack(inv: &mut ScriptInvocation<'_>, ack: &Ack, meta: Option<&AckMeta>) {
    inv.arg(ack.lease.job).arg(ack.lease.token);
    if meta.is_none() && ack.outcome == Outcome::Completed {
        inv.arg("c");
        return;
    }
    let state = ack.outcome.state();
    let row = |state: JobState| AckedRow {
        pipeline: meta.and_then(|m| m.pipeline),
        state,
        step: meta.and_then(|m| m.step.clone()),
        dependents: meta.map(|m| m.dependents.clone()).unwrap_or_default(),
    };
    inv.arg("x")
        .arg(state.as_str())
        .arg(
            ack.outcome
                .run_at()
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default(),
        )
        .arg(if ack.outcome.error().is_some() { "1" } else { "0" })
        .arg(ack.outcome.error().unwrap_or_default())
        .arg(if meta.is_some() { "1" } else { "0" });
    push_effects(inv, &Progress::of(&[row(state)]));
    if matches!(state, JobState::Scheduled | JobState::Available) {
        inv.arg("1");
        push_effects(inv, &Progress::of(&[row(JobState::Cancelled)]));
    } else {
        inv.arg("0");
    }
}

/// Adds the effects of one acked row: wake, succeeded check, stop state and reason, released steps.
fn push_effects(inv: &mut ScriptInvocation<'_>, progress: &Progress) {
    let stop = progress.stopped.first();
    inv.arg(if progress.wake { "1" } else { "0" })
        .arg(if progress.maybe_succeeded.is_empty() { "0" } else { "1" })
        .arg(stop.map(|s| s.state.as_str()).unwrap_or_default())
        .arg(stop.map(|s| s.reason.as_str()).unwrap_or_default())
        .arg(progress.released.len());
    for (_, step) in &progress.released {
        inv.arg(step);
    }
}
