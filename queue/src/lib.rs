//! Roundhouse: Enclii's durable job queue.
//!
//! Typed jobs ([`JobKind`]) are enqueued into a [`Backend`] — PostgreSQL (production), SQLite (the
//! embedded single-node default) or Redis — and claimed by workers in batches under per-job
//! leases that heartbeats renew. Failed attempts retry with exponential backoff and full jitter
//! (stored, so it survives restarts), then go `dead`. Claims enforce per-project concurrency caps
//! and rate limits and share capacity fairly between projects. Pipelines are small DAGs of jobs.
//!
//! This crate knows nothing of HTTP, builds or Kubernetes.

pub mod backend;
pub mod error;
pub mod job;
pub mod pipeline;
pub mod postgres;
mod progress;
pub mod redis;
pub mod sqlite;
pub mod trace;

use std::sync::Arc;

pub use backend::{
    Backend, CancelOutcome, ClaimRequest, DepthRow, HeartbeatReply, JobFilter, ProjectLimits, QueueStats, RescueReport,
};
pub use error::{QueueError, Result};
pub use job::{
    Ack, Backoff, ClaimedJob, Enqueued, JobId, JobKind, JobPolicy, JobRecord, JobState, Lease, NewJob, Outcome,
    PipelineId,
};
pub use pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord, PipelineState, PipelineStep, StepRecord};
pub use trace::TraceContext;

/// Opens the backend a URL names: `postgres://…`, `sqlite://PATH` (or `sqlite::memory:`), `redis://…`.
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Backend>> {
    let scheme = url.split(':').next().unwrap_or_default();
    Ok(match scheme {
        "postgres" | "postgresql" => Arc::new(postgres::PostgresQueue::connect(url, max_connections).await?),
        "redis" | "rediss" => Arc::new(redis::RedisQueue::connect(url).await?),
        "sqlite" => Arc::new(sqlite::SqliteQueue::connect(url).await?),

        other => return Err(QueueError::UnsupportedUrl(other.to_string())),
    })
}
