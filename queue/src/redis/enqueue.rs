//! Enqueueing jobs and pipelines: one script call per chunk of jobs, one per pipeline; and the id
//! sequences they draw from, raised after a data loss so that ids are never handed out again.

use ::redis::Value;

use crate::error::{QueueError, Result};
use crate::job::{Enqueued, JobId, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued};

use super::decode::*;
use super::{ENQUEUE_CHUNK, RedisQueue};

impl RedisQueue {
    pub(super) async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut payloads = Vec::with_capacity(jobs.len());
        for job in &jobs {
            payloads.push(
                serde_json::to_string(&job.payload).map_err(|source| QueueError::Payload {
                    kind: job.kind.clone(),
                    source,
                })?,
            );
        }
        let chunks = jobs.len().div_ceil(ENQUEUE_CHUNK);
        // One script call per chunk, all sent at once on the multiplexed connection (pipelined);
        // the last one publishes the wake-up.
        let calls = jobs
            .chunks(ENQUEUE_CHUNK)
            .zip(payloads.chunks(ENQUEUE_CHUNK))
            .enumerate()
            .map(|(n, (chunk, payloads))| {
                let mut inv = self.scripts.enqueue.prepare_invoke();
                inv.arg(&self.prefix).arg(if n + 1 == chunks { "1" } else { "0" });
                for (job, payload) in chunk.iter().zip(payloads) {
                    inv.arg(&job.kind)
                        .arg(&job.project)
                        .arg(payload)
                        .arg(job.policy.priority)
                        .arg(policy_text(&job.policy))
                        .arg(job.run_at.map(|t| t.timestamp_millis().to_string()).unwrap_or_default())
                        .arg(job.unique_key.as_deref().unwrap_or_default());
                }
                let mut con = self.con();
                async move { inv.invoke_async::<Value>(&mut con).await }
            });
        let replies = futures::future::try_join_all(calls).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for reply in replies {
            let f = strings(reply, "enqueue reply")?;
            for pair in f.chunks(2) {
                out.push(Enqueued {
                    id: int(&pair[0], "job id")?,
                    duplicate: pair.get(1).is_some_and(|d| d.as_deref() == Some("1")),
                });
            }
        }
        if out.len() != jobs.len() {
            return Err(corrupt("enqueue returned the wrong number of jobs"));
        }
        Ok(out)
    }

    pub(super) async fn enqueue_new_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let plan = pipeline.plan()?;
        let mut inv = self.scripts.enqueue_pipeline.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&pipeline.project)
            .arg(&pipeline.name)
            .arg(if pipeline.supersede_key.is_some() { "1" } else { "0" })
            .arg(pipeline.supersede_key.as_deref().unwrap_or_default())
            .arg(if pipeline.unique_key.is_some() { "1" } else { "0" })
            .arg(pipeline.unique_key.as_deref().unwrap_or_default());
        for planned in &plan {
            let step = planned.step;
            let job = &step.job;
            let payload = serde_json::to_string(&job.payload).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            let needs = serde_json::to_string(&step.needs).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            let dependents = serde_json::to_string(&planned.dependents).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            inv.arg(&step.name)
                .arg(&job.kind)
                .arg(payload)
                .arg(job.policy.priority)
                .arg(policy_text(&job.policy))
                .arg(job.run_at.map(|t| t.timestamp_millis().to_string()).unwrap_or_default())
                .arg(job.unique_key.as_deref().unwrap_or_default())
                .arg(needs)
                .arg(dependents)
                .arg(step.needs.len());
        }
        let reply: Value = inv.invoke_async(&mut self.con()).await?;
        let f = strings(reply, "enqueue_pipeline reply")?;
        match tag(&f) {
            "dup" => Ok(PipelineEnqueued {
                id: int(f.get(1).unwrap_or(&None), "pipeline id")?,
                duplicate: true,
                superseded: vec![],
            }),
            "conflict" => Err(QueueError::InvalidPipeline(format!(
                "step `{}` has a unique key that another job already holds",
                f.get(1).cloned().flatten().unwrap_or_default()
            ))),
            "ok" => {
                let id = int(f.get(1).unwrap_or(&None), "pipeline id")?;
                let mut superseded = f[2..]
                    .iter()
                    .map(|v| int(v, "pipeline id"))
                    .collect::<Result<Vec<_>>>()?;
                superseded.sort_unstable();
                Ok(PipelineEnqueued {
                    id,
                    duplicate: false,
                    superseded,
                })
            }
            _ => Err(corrupt("enqueue_pipeline reply has the wrong shape")),
        }
    }

    /// Raises `pseq` and `seq` to at least the floors in one script (never lowers them), so that
    /// the next pipeline and job ids are above every id the caller still holds.
    pub(super) async fn raise_id_floors(&self, pipeline: PipelineId, job: JobId) -> Result<()> {
        let v: Value = self
            .scripts
            .ensure_ids
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(pipeline.max(0))
            .arg(job.max(0))
            .invoke_async(&mut self.con())
            .await?;
        let raised = strings(v, "ensure_ids reply")?;
        if raised.len() != 2 {
            return Err(corrupt("ensure_ids reply has the wrong shape"));
        }
        Ok(())
    }
}
