//! Liveness on Docker: every replica of a service whose spec has `health.liveness` is probed from
//! the host (HTTP GET or TCP connect against its published port, like readiness) every
//! `periodSeconds` (10); after `failureThreshold` (3) failures in a row the replica is restarted
//! and counted. A replica that exits is restarted by its restart policy (`unless-stopped`), which
//! the engine counts. Both counts make [`ReleaseStatus::restarts`] (`enclii ps`, the dashboard),
//! so a crash loop shows.
//!
//! The liveness counts live in this process: a restart of the worker forgets them (the engine's
//! own restart counts stay).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use enclii_deploy_contract::error::Result;
use enclii_deploy_contract::model::{ReplicaEvent, ReplicaEventKind, ServiceKey};
use enclii_domain::spec::Probe;
use tracing::warn;

use crate::engine::{DockerTarget, docker_error};
use crate::replicas::check;

const TICK: Duration = Duration::from_secs(1);
const DEFAULT_PERIOD_SECS: u32 = 10;
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// One replica's liveness so far.
#[derive(Default)]
pub(crate) struct Liveness {
    failures: u32,
    last_probe: Option<Instant>,
    /// Restarts this process made after failed probes.
    pub(crate) restarts: u32,
}

impl DockerTarget {
    /// Probes live replicas until the target is dropped (the task holds it weakly).
    pub(crate) fn watch_liveness(self: &Arc<Self>) {
        let target: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(this) = target.upgrade() else { return };
                if let Err(e) = this.probe_liveness().await {
                    warn!(error = %e, "liveness probes skipped this round");
                }
            }
        });
    }

    async fn probe_liveness(&self) -> Result<()> {
        let mut probed = Vec::new();
        for (key, binding) in self.junctions.bindings() {
            let Some(liveness) = binding.liveness.as_ref() else {
                continue;
            };
            if binding.paused {
                continue;
            }
            let releases: Vec<i64> = binding
                .stable
                .iter()
                .chain(binding.canary.iter().map(|(c, _)| c))
                .map(|b| b.release)
                .collect();
            for release in releases {
                for (name, _, running) in self.containers(&key, Some(release)).await? {
                    if running {
                        self.probe_replica(&key, release, &name, liveness).await?;
                    }
                    probed.push(name);
                }
            }
        }
        // Replicas gone (a newer release, a removal) are forgotten.
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| probed.contains(name));
        Ok(())
    }

    /// Probes one replica if its period has passed; restarts it at the failure threshold.
    async fn probe_replica(&self, key: &ServiceKey, release: i64, name: &str, liveness: &Probe) -> Result<()> {
        let period = Duration::from_secs(u64::from(liveness.period_seconds.unwrap_or(DEFAULT_PERIOD_SECS)));
        let due = {
            let mut states = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
            let state = states.entry(name.to_string()).or_default();
            let due = state.last_probe.is_none_or(|at| at.elapsed() >= period);
            if due {
                state.last_probe = Some(Instant::now());
            }
            due
        };
        if !due {
            return Ok(());
        }
        let Some(addr) = self.published_addr(name).await? else {
            return Ok(());
        };
        let outcome = check(addr, Some(liveness), u32::from(addr.port())).await;
        let threshold = liveness.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD);
        let restart = {
            let mut states = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
            let state = states.entry(name.to_string()).or_default();
            match &outcome {
                Ok(()) => {
                    state.failures = 0;
                    false
                }
                Err(_) => {
                    state.failures += 1;
                    if state.failures >= threshold {
                        state.failures = 0;
                        state.restarts += 1;
                        true
                    } else {
                        false
                    }
                }
            }
        };
        if restart {
            let why = outcome.err().unwrap_or_default();
            warn!(service = %key, replica = name, %why, threshold, "liveness probe failed; restarting the replica");
            let options = bollard::query_parameters::RestartContainerOptionsBuilder::default()
                .t(5)
                .build();
            self.restarting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string());
            // Recorded before the restart, which may take the stop timeout.
            self.report(ReplicaEvent {
                key: key.clone(),
                release,
                replica: name.to_string(),
                kind: ReplicaEventKind::LivenessFailed,
                detail: format!("failed its liveness probe {threshold} times in a row ({why}); restarted"),
            })
            .await;
            self.docker
                .restart_container(name, Some(options))
                .await
                .map_err(docker_error("restarting a replica that failed its liveness probe"))?;
        }
        Ok(())
    }

    /// Restarts of the replica: the engine's (after exits) and this process's (after failed
    /// liveness probes).
    pub(crate) async fn restarts(&self, name: &str) -> Result<u32> {
        let inspect = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(docker_error("inspecting a replica"))?;
        let by_engine = inspect.restart_count.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32;
        let by_liveness = self
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |s| s.restarts);
        Ok(by_engine.saturating_add(by_liveness))
    }
}
