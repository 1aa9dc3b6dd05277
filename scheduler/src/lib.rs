//! Periodic queue maintenance that no single job owns: pruning finished jobs after their
//! retention. (Lease rescue runs in every worker process so that a worker-only deployment
//! still recovers from crashes; cron, cost sampling and preview expiry join this crate with the
//! deploy issue, behind a leader lease.)

use std::sync::Arc;
use std::time::Duration;

use enclii_queue::Backend;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Finished (completed, cancelled, dead) jobs are deleted this long after they finished.
    pub retention: Duration,
    pub prune_every: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            prune_every: Duration::from_secs(60),
        }
    }
}

/// Runs until `shutdown` fires.
pub async fn run(backend: Arc<dyn Backend>, config: SchedulerConfig, shutdown: CancellationToken) {
    info!(retention = ?config.retention, "scheduler started");
    loop {
        match prune_once(backend.as_ref(), config.retention).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "pruned finished jobs"),
            Err(e) => warn!(error = %e, "pruning failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.prune_every) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    info!("scheduler stopped");
}

/// Deletes jobs that finished more than `retention` ago.
pub async fn prune_once(backend: &dyn Backend, retention: Duration) -> enclii_queue::Result<u64> {
    let before = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(1));
    let pruned = backend.prune(before).await?;
    metrics::counter!("enclii_queue_jobs_pruned_total").increment(pruned);
    Ok(pruned)
}
