//! Redis backend: every state change is one atomic Lua script, so caps, leases and pipeline
//! progression are exact across worker processes, and every script does O(batch) work.
//!
//! Data model (all keys under `{prefix}:`, default prefix `roundhouse`):
//! - `job:{id}` hash: kind, project, payload (JSON text), state, priority, policy
//!   (`priority:max_attempts:timeout_ms:backoff_base_ms:backoff_max_ms`, one field so that a claim
//!   reads few fields), attempt, claims (claims so far: the lease token; never decremented or
//!   reset, unlike attempt), run_at_ms, created_at_ms, attempted_at_ms, finished_at_ms,
//!   lease_expires_at_ms and worker (meaningful only while running), cancel_requested,
//!   unique_key, pipeline, step, needs / dependents (JSON arrays), deps_remaining, last_error.
//!   Ids come from `INCRBY seq`. The sequences live only here: a Redis restart without
//!   persistence starts them again from 1, so the control plane raises them above the ids it
//!   still holds (`ensure_ids.lua`, [`Backend::ensure_ids_above`]).
//! - `avail:{len(kind)}:{kind}:{project}` zset of available jobs, scored `priority * 2^36 + id`
//!   (lower priority first, then oldest); `projects:{kind}` set of projects with available jobs of
//!   that kind; `avail_at:{kind}` zset of available jobs by `run_at` (oldest-available stats).
//! - `scheduled` zset by run_at (delayed jobs and retries), promoted inside the claim script;
//!   `running` zset by lease expiry; `nrunning` hash project → running count; `finished` zset of
//!   finished jobs outside pipelines by finished_at (prune; a pipeline's steps are pruned with their
//!   run); `unique` hash unique key → job id; `kinds` set of kinds ever enqueued;
//!   `depth` hash `{state}:{len(kind)}:{kind}{project}` → count (stats in O(kinds × projects)).
//! - `pipeline:{id}` hash (project, name, state, supersede_key, unique_key, created_at_ms,
//!   finished_at_ms) and `pipeline:{id}:steps` hash step → job id; ids from `pseq`;
//!   `supersede:{key}` set of running pipelines with that key; `punique` hash unique key →
//!   pipeline id; `pfinished` zset of runs that are over, by when they last changed: their end, or
//!   a step ending after it (prune).
//! - `limits:{project}` hash: max_running, jobs_per_minute, tokens, refilled_at_ms.
//! - channel `wake`: one message per enqueue call (and when acks make work available).
//!
//! Acknowledgements: a job's pipeline, step and dependents never change, so they are read first
//! (only for acks of pipeline steps); [`Progress::of`] on the row each ack would leave decides its
//! pipeline effects, and one script per batch applies every ack that still holds its lease together
//! with those effects, atomically (a crash cannot separate a step's completion from its fan-in).
//!
//! Ordering within a priority assumes ids below 2^36 (the score must stay exact in a double).
//! Timestamps inside scripts come from the Redis server clock (`TIME`), so processes agree.
//! The key layout is built inside the scripts, so this backend targets a single Redis server
//! (or a primary with replicas), not Redis Cluster.

mod claim;
mod completion;
mod connection;
mod decode;
mod enqueue;
mod operators;
mod reaper;
mod scripts;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::backend::{
    Backend, CancelOutcome, ClaimRequest, HeartbeatReply, JobFilter, ProjectLimits, QueueStats, RescueReport, Wakeup,
};
use crate::error::Result;
use crate::job::{Ack, ClaimedJob, Enqueued, JobId, JobRecord, Lease, NewJob, PipelineId};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord};

use connection::{listen, maxmemory_policy, persistence, unavailable, warn_if_evicting, warn_if_volatile};
use scripts::Scripts;

const NAME: &str = "redis";
/// Key prefix used by [`RedisQueue::connect`].
pub const DEFAULT_PREFIX: &str = "roundhouse";
/// Jobs per enqueue script call.
const ENQUEUE_CHUNK: usize = 1_000;
/// Acks per acknowledge script call.
const ACK_CHUNK: usize = 1_000;
/// Expired leases handled per `rescue_expired` call (as in the PostgreSQL backend).
const RESCUE_BATCH: usize = 1_000;
/// Finished jobs (or pipelines and their steps) examined per prune script call.
const PRUNE_BATCH: usize = 1_000;
/// Ids [`Backend::list_jobs`] reads back from the newest, and how many per round trip.
const LIST_SCAN_WINDOW: i64 = 50_000;
const LIST_PAGE: i64 = 500;
/// Most jobs one claim may return.
const MAX_CLAIM: usize = 10_000;

/// The Redis queue backend. Cheap to share; all methods take `&self`.
pub struct RedisQueue {
    con: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    notify: Arc<Wakeup>,
    rotation: AtomicUsize,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl RedisQueue {
    /// Connects with the default key prefix (`roundhouse`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects with all keys under `{prefix}:` (tests use one prefix each).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self> {
        let client = ::redis::Client::open(url).map_err(|e| unavailable(url, &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2);
        let mut con = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| unavailable(url, &e))?;
        warn_if_evicting(maxmemory_policy(&mut con).await.as_deref());
        let (appendonly, save) = persistence(&mut con).await;
        warn_if_volatile(appendonly.as_deref(), save.as_deref());
        let scripts = Scripts::new();
        for script in scripts.all() {
            script.load_async(&mut con).await.map_err(|e| unavailable(url, &e))?;
        }
        let notify = Arc::new(Wakeup::default());
        let channel = format!("{prefix}:wake");
        let listener = tokio::spawn(listen(client, channel, notify.clone()));
        Ok(Self {
            con,
            prefix: prefix.to_string(),
            scripts,
            notify,
            rotation: AtomicUsize::new(0),
            listener,
        })
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}:job:{id}", self.prefix)
    }
}

#[async_trait]
impl Backend for RedisQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING").query_async(&mut self.con()).await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.enqueue_jobs(jobs).await
    }

    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        self.enqueue_new_pipeline(pipeline).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_jobs(request).await
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        self.renew_leases(worker, leases, lease).await
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        self.apply_acks(&acks, false).await
    }

    async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        self.cancel_job(id).await
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        self.retry_job(id).await
    }

    async fn rescue_expired(&self) -> Result<RescueReport> {
        self.rescue_expired_leases().await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        self.prune_finished(before).await
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.read_job(id).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.list_matching_jobs(filter).await
    }

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        self.read_pipeline(id).await
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.read_stats().await
    }

    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
        self.write_project_limits(project, limits).await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.notify.wait(timeout).await;
    }

    async fn ensure_ids_above(&self, pipeline: PipelineId, job: JobId) -> Result<()> {
        self.raise_id_floors(pipeline, job).await
    }
}
