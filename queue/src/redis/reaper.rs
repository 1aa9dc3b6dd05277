//! The lease reaper (expired leases acknowledged as failed attempts) and pruning of finished work.

use ::redis::{Script, Value};
use chrono::{DateTime, Utc};

use crate::backend::RescueReport;
use crate::error::Result;
use crate::job::Lease;
use crate::progress::expired_lease_ack;

use super::decode::*;
use super::{PRUNE_BATCH, RESCUE_BATCH, RedisQueue};

impl RedisQueue {
    pub(super) async fn rescue_expired_leases(&self) -> Result<RescueReport> {
        let v: Value = self
            .scripts
            .rescue_scan
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(RESCUE_BATCH)
            .invoke_async(&mut self.con())
            .await?;
        let mut rows = array(v, "rescue reply")?.into_iter();
        let now_ms = int(&opt_string(rows.next().unwrap_or(Value::Nil))?, "server time")?;
        let now = ms_time(now_ms, "server time")?;
        let mut report = RescueReport::default();
        let mut acks = Vec::new();
        for row in rows {
            let f = strings(row, "expired job")?;
            if f.len() != 6 {
                return Err(corrupt("rescue reply has the wrong shape"));
            }
            let lease = Lease {
                job: int(&f[0], "job id")?,
                token: int(&f[2], "claims")?.max(0) as u32,
            };
            let attempt = int(&f[1], "attempt")?.max(0) as u32;
            let policy = policy_of(&f[3])?;
            let pipeline = opt_int(&f[4], "pipeline")?;
            let worker = f[5].as_deref().filter(|w| !w.is_empty());
            acks.push(expired_lease_ack(
                lease,
                attempt,
                pipeline,
                &policy,
                worker,
                now,
                &mut report,
            ));
        }
        self.apply_acks(&acks, true).await?;
        Ok(report)
    }

    pub(super) async fn prune_finished(&self, before: DateTime<Utc>) -> Result<u64> {
        let before_ms = before.timestamp_millis();
        let mut total = 0u64;
        // Every entry a call reads leaves the range it reads (see the scripts), so each call
        // starts at the front of its index and does O(PRUNE_BATCH) work.
        loop {
            let (deleted, scanned) = self.prune_call(&self.scripts.prune_jobs, before_ms).await?;
            total += deleted;
            if scanned < PRUNE_BATCH as u64 {
                break;
            }
        }
        loop {
            let (deleted, more) = self.prune_call(&self.scripts.prune_pipelines, before_ms).await?;
            total += deleted;
            if more == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// One prune script call; returns its two counts.
    async fn prune_call(&self, script: &Script, before_ms: i64) -> Result<(u64, u64)> {
        let v: Value = script
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(before_ms)
            .arg(PRUNE_BATCH)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "prune reply")?;
        if f.len() != 2 {
            return Err(corrupt("prune reply has the wrong shape"));
        }
        Ok((
            int(&f[0], "deleted")?.max(0) as u64,
            int(&f[1], "prune count")?.max(0) as u64,
        ))
    }
}
