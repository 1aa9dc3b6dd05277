//! Roundhouse worker pool: claims jobs in batches, runs typed handlers under per-kind timeouts,
//! renews leases by heartbeat, acknowledges in batches, rescues jobs of crashed workers, and
//! shuts down gracefully. The handlers for Enclii's job kinds register themselves in a
//! [`Registry`]; this crate knows nothing of what they do.

mod handler;
mod pool;

pub use handler::{Handler, JobContext, JobError, Registry, TypedHandler};
pub use pool::{Worker, WorkerConfig, WorkerError};
