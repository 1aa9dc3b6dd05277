//! The one trait both targets implement.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{DeployError, Result};
use crate::model::{
    AddonKey, AddonWorkload, DeployOutcome, JobRunSpec, LogLines, LogRequest, ReleaseMetrics, ReplicaEvent, Rollout,
    RouteBinding, ServiceKey, ServiceStatus, Usage, Workload,
};
use enclii_domain::addons::{AddonEndpoint, AddonKind};
use tokio::io::{AsyncRead, AsyncWrite};

/// The exit code [`Target::run_job`] reports for a run stopped at its timeout (as `timeout(1)`
/// does), so the queue retries it like any failed run.
pub const JOB_TIMEOUT_EXIT_CODE: i64 = 124;

/// How much [`Target::remove`] takes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The service alone (it was deleted); the rest of its environment stays.
    Service { keep_volumes: bool },
    /// The whole environment the service is in (a preview closed, an environment or a project
    /// deleted).
    Environment { keep_volumes: bool },
}

impl Removal {
    /// Whether the service's volumes (and their data) survive the removal.
    pub fn keeps_volumes(self) -> bool {
        match self {
            Removal::Service { keep_volumes } | Removal::Environment { keep_volumes } => keep_volumes,
        }
    }
}

/// Where a target reports what its replicas did on their own (exits, failed liveness probes):
/// the server records them in the service's history. Recording never fails the target: a sink
/// that cannot write logs and drops the event.
#[async_trait]
pub trait ReplicaEvents: Send + Sync {
    async fn record(&self, event: ReplicaEvent);
}

/// A place releases run: a single Docker engine, or a Kubernetes cluster.
///
/// Every method is idempotent: the queue runs a job at least once, so a retried deploy, shift or
/// removal must reach the same end state without doubling anything.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// `docker` or `kubernetes`.
    fn name(&self) -> &'static str;

    /// Runs `workload`'s release. Checks the environment's quota and the routes first and
    /// refuses ([`crate::DeployError::Refused`]) with nothing applied when they do not fit.
    /// [`Rollout::Replace`] returns once the release is healthy and serves all traffic (the
    /// previous releases are gone); [`Rollout::Canary`] once it is healthy beside the stable
    /// release with its share of the traffic. With no stable release a canary is a replace.
    async fn deploy(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome>;

    /// Gives the canary `release` `percent` of the service's traffic.
    async fn shift(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()>;

    /// Makes the canary `release` the stable one with all traffic and removes the old stable.
    async fn promote(&self, key: &ServiceKey, release: i64) -> Result<()>;

    /// Removes the canary `release`; the stable release serves all traffic again.
    async fn abort_canary(&self, key: &ServiceKey, release: i64) -> Result<()>;

    /// What `release` served over the last `window`: requests, errors, P95 latency.
    async fn release_metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> Result<ReleaseMetrics>;

    /// What runs now for the service.
    async fn status(&self, key: &ServiceKey) -> Result<ServiceStatus>;

    /// Stops the service without forgetting it (budget action): no replicas, routes answer 503.
    async fn pause(&self, key: &ServiceKey) -> Result<()>;

    /// Removes everything the service has in the environment — replicas, job containers, routes,
    /// secrets, and its volumes with their data unless the removal keeps them; with
    /// [`Removal::Environment`] the environment's own resources too (the Kubernetes namespace).
    async fn remove(&self, key: &ServiceKey, removal: Removal) -> Result<()>;

    /// Runs one of the service's jobs to completion with `workload`'s image and environment,
    /// sending its output line by line to `log`; returns the exit code.
    async fn run_job(&self, workload: &Workload, run: &JobRunSpec, log: UnboundedSender<String>) -> Result<i64>;

    /// Serves the service's routes (every route of the service in its environment) from now on,
    /// without a deploy, when a release of it runs; with none running, the next deploy binds them.
    /// Refuses routes another service holds, with nothing changed. `Ok(false)`: this target
    /// applies routes only at the next deploy.
    async fn apply_routes(&self, key: &ServiceKey, routes: &[RouteBinding]) -> Result<bool> {
        let _ = (key, routes);
        Ok(false)
    }

    /// Where the services of the add-on's environment reach it (a name on the environment's
    /// network and the kind's port).
    fn addon_endpoint(&self, key: &AddonKey, kind: AddonKind) -> AddonEndpoint {
        AddonEndpoint::on_network(&key.name, kind)
    }

    /// Where the add-on answers from outside its network, if anywhere: on Docker its port
    /// published on the node's loopback (for `enclii addons connect` on the node).
    async fn addon_published(&self, key: &AddonKey) -> Result<Option<std::net::SocketAddr>> {
        let _ = key;
        Ok(None)
    }

    /// Runs the add-on unless it runs (with its data kept across restarts), makes the login of
    /// `addon.credentials` exist with that password — beside `addon.previous`, which keeps working
    /// — and returns once it accepts that login. Idempotent.
    async fn provision_addon(&self, addon: &AddonWorkload) -> Result<()> {
        let _ = addon;
        Err(DeployError::Refused(format!(
            "the {} target does not run add-ons; run the database elsewhere and give its URL as a secret",
            self.name()
        )))
    }

    /// Disables the login `user` (a previous generation's, after a rotation), authenticating as
    /// the current one. Idempotent.
    async fn retire_addon_login(&self, addon: &AddonWorkload, user: &str) -> Result<()> {
        let _ = (addon, user);
        Ok(())
    }

    /// Removes the add-on, and its data unless `keep_data`. Idempotent.
    async fn remove_addon(&self, key: &AddonKey, keep_data: bool) -> Result<()> {
        let _ = (key, keep_data);
        Ok(())
    }

    /// Writes a backup of the add-on's data into `sink`: `pg_dump`'s custom format for
    /// PostgreSQL, an RDB snapshot for Redis. Returns once the dump is complete and the tool
    /// exited cleanly, `sink` shut down; an error means what was written is not a backup.
    async fn backup_addon(&self, addon: &AddonWorkload, sink: &mut (dyn AsyncWrite + Send + Unpin)) -> Result<()> {
        let _ = (addon, sink);
        Err(DeployError::Refused(format!(
            "the {} target does not back up add-ons",
            self.name()
        )))
    }

    /// Replaces the add-on's data with the backup read from `source` (what
    /// [`backup_addon`](Self::backup_addon) wrote), then returns once it serves again.
    async fn restore_addon(&self, addon: &AddonWorkload, source: &mut (dyn AsyncRead + Send + Unpin)) -> Result<()> {
        let _ = (addon, source);
        Err(DeployError::Refused(format!(
            "the {} target does not restore add-ons",
            self.name()
        )))
    }

    /// The service's resource usage now, for cost sampling.
    async fn usage(&self, key: &ServiceKey) -> Result<Usage>;

    /// The runtime log of the service's replicas (every release running in the environment):
    /// the last `request.tail` lines of each, then — with `request.follow` — new lines as they
    /// are printed, until the caller drops the stream. Each line names its replica and stream.
    async fn logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines>;
}
