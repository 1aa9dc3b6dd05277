//! Claims (caps, token buckets and the fair split run inside the claim script) and heartbeats.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::Value;

use crate::backend::{Backend, ClaimRequest, HeartbeatReply, MAX_PROJECTS_PER_CLAIM};
use crate::error::{QueueError, Result};
use crate::job::{Ack, ClaimedJob, Lease, Outcome};

use super::decode::*;
use super::{ACK_CHUNK, MAX_CLAIM, RedisQueue};

impl RedisQueue {
    pub(super) async fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut kinds: Vec<&str> = request.kinds.iter().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed) % (1 << 30);
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&request.worker)
            .arg(request.lease.as_millis() as u64)
            .arg(request.limit.min(MAX_CLAIM))
            .arg(rotation)
            .arg(MAX_PROJECTS_PER_CLAIM);
        for kind in kinds {
            inv.arg(kind);
        }
        let reply: Value = inv.invoke_async(&mut self.con()).await?;
        let mut jobs = Vec::new();
        let mut corrupt = Vec::new();
        for entry in array(reply, "claim reply")? {
            match claimed(entry) {
                Ok(job) => jobs.push(job),
                Err(Unreadable {
                    lease: Some(lease),
                    problem,
                }) => {
                    tracing::error!(job = lease.job, error = %problem, "dead-lettering a job whose stored data cannot be read");
                    corrupt.push(Ack {
                        lease,
                        pipeline: None,
                        outcome: Outcome::Dead {
                            error: format!("{problem}; fix or re-enqueue the job"),
                        },
                    });
                }
                Err(Unreadable { lease: None, problem }) => return Err(problem),
            }
        }
        // One unreadable job must not fail the claim of the others.
        if !corrupt.is_empty() {
            self.acknowledge(corrupt).await?;
        }
        Ok(jobs)
    }

    pub(super) async fn renew_leases(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        let mut reply = HeartbeatReply::default();
        for chunk in leases.chunks(ACK_CHUNK) {
            let mut inv = self.scripts.heartbeat.prepare_invoke();
            inv.arg(&self.prefix).arg(worker).arg(lease.as_millis() as u64);
            for l in chunk {
                inv.arg(l.job).arg(l.token);
            }
            let v: Value = inv.invoke_async(&mut self.con()).await?;
            let held = strings(v, "heartbeat reply")?;
            if held.len() != chunk.len() {
                return Err(corrupt("heartbeat reply has the wrong shape"));
            }
            for (l, h) in chunk.iter().zip(held) {
                match h.as_deref() {
                    Some("1") => {}
                    Some("2") => reply.cancel.push(l.job),
                    _ => reply.lost.push(l.job),
                }
            }
        }
        Ok(reply)
    }
}

/// A claimed job that cannot be read, with its lease when even that much could be read.
struct Unreadable {
    lease: Option<Lease>,
    problem: QueueError,
}

fn claimed(v: Value) -> std::result::Result<ClaimedJob, Unreadable> {
    let unreadable = |problem| Unreadable { lease: None, problem };
    let mut f = strings(v, "claimed job").map_err(unreadable)?;
    if f.len() != 11 {
        return Err(unreadable(corrupt("claim reply has the wrong shape")));
    }
    let id = int(&f[0], "job id").map_err(unreadable)?;
    let lease_token = int(&f[5], "claims").map_err(unreadable)?.max(0) as u32;
    let lease = Lease {
        job: id,
        token: lease_token,
    };
    let mut read = || -> Result<ClaimedJob> {
        Ok(ClaimedJob {
            id,
            kind: req(f[1].take(), "kind")?,
            project: req(f[2].take(), "project")?,
            payload: payload(f[3].take(), id)?,
            attempt: int(&f[4], "attempt")?.max(0) as u32,
            lease_token,
            policy: policy_of(&f[6])?,
            created_at: ms_time(int(&f[7], "created_at")?, "created_at")?,
            run_at: ms_time(int(&f[8], "run_at")?, "run_at")?,
            pipeline: opt_int(&f[9], "pipeline")?,
            step: non_empty(f[10].take()),
        })
    };
    read().map_err(|problem| Unreadable {
        lease: Some(lease),
        problem,
    })
}
