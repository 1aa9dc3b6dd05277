//! [`Target`] for [`DockerTarget`]: deploys, canary shifts and promotion, pause and removal;
//! one-off job runs (`jobs.rs`), usage and runtime logs (`observe.rs`), add-ons (`addons.rs`).

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use async_trait::async_trait;
use bollard::query_parameters::{RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{
    AddonKey, AddonWorkload, DeployOutcome, JobRunSpec, LogLines, LogRequest, ReleaseMetrics, ReleaseStatus, Rollout,
    RouteBinding, ServiceKey, ServiceStatus, Track, Usage, Workload,
};
use enclii_deploy_contract::target::{Removal, Target};
use tokio::sync::mpsc::UnboundedSender;
use tracing::info;

use crate::engine::{DockerTarget, docker_error, is_not_found};
use crate::junctions::{Backends, Binding};

/// How long replicas the router stopped using keep running before they are removed: requests in
/// flight to them finish. (A request slower than this to a replica being replaced is cut off.)
const DRAIN: Duration = Duration::from_secs(1);

#[async_trait]
impl Target for DockerTarget {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn deploy(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome> {
        workload.check_quota()?;
        self.junctions.check_routes(&workload.key, &workload.routes)?;
        let key = &workload.key;
        let _change = self.changes.lock().await;
        if let Some(applied) = self
            .junctions
            .binding(key)
            .map(|b| b.deployment)
            .filter(|applied| *applied > workload.deployment)
        {
            return Err(DeployError::Superseded {
                deployment: workload.deployment,
                applied,
            });
        }
        self.ensure_image(&workload.image).await?;
        let addrs = self.start_replicas(workload).await?;
        let replicas = addrs.len().max(workload.spec.runtime.replicas.min as usize) as u32;
        let backends = Backends {
            release: workload.release,
            addrs,
            generation: Self::generation(workload),
        };
        let stable = self.junctions.binding(key).and_then(|b| b.stable);
        let track = match rollout {
            Rollout::Canary { percent }
                if percent < 100 && stable.as_ref().is_some_and(|s| s.release != workload.release) =>
            {
                Track::Canary
            }
            _ => Track::Stable,
        };
        self.junctions.update(key, |binding| {
            let binding = binding.get_or_insert_with(Binding::default);
            binding.routes = workload.routes.clone();
            binding.paused = false;
            binding.deployment = workload.deployment;
            binding.liveness = workload.spec.health.liveness.clone();
            match (track, rollout) {
                (Track::Canary, Rollout::Canary { percent }) => binding.canary = Some((backends, percent)),
                _ => {
                    binding.stable = Some(backends);
                    binding.canary = None;
                }
            }
        });
        let volume_bytes = workload.spec.volumes.iter().filter_map(|v| v.size_bytes()).sum();
        self.volume_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), volume_bytes);
        // What runs now is the stable release and this one: an earlier canary it replaced goes.
        let keep: Vec<i64> = stable.iter().map(|s| s.release).chain([workload.release]).collect();
        let keep = if track == Track::Stable {
            &keep[keep.len() - 1..]
        } else {
            &keep[..]
        };
        if stable.is_some() {
            // Requests the router sent to the replicas about to go finish first (it sends them
            // nothing new since the binding changed above).
            tokio::time::sleep(DRAIN).await;
        }
        self.remove_releases_except(key, keep).await?;
        self.remove_extra_replicas(workload).await?;
        self.save().await?;
        info!(service = %key, release = workload.release, ?track, replicas, "release deployed");
        Ok(DeployOutcome {
            replicas,
            url: workload.routes.first().map(|r| self.junctions.url(r)),
            track,
        })
    }

    async fn shift(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()> {
        let _change = self.changes.lock().await;
        self.require_canary(key, release)?;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding
                && let Some((_, share)) = &mut b.canary
            {
                *share = percent.min(100);
            }
        });
        self.save().await
    }

    async fn promote(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.require_binding(key)?;
        if binding.stable.as_ref().is_some_and(|s| s.release == release) && binding.canary.is_none() {
            return Ok(()); // promoted already (a retried job)
        }
        self.require_canary(key, release)?;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding {
                b.stable = b.canary.take().map(|(canary, _)| canary);
            }
        });
        self.remove_releases_except(key, &[release]).await?;
        self.save().await
    }

    async fn abort_canary(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.require_binding(key)?;
        if binding.canary.as_ref().is_some_and(|(c, _)| c.release == release) {
            self.junctions.update(key, |binding| {
                if let Some(b) = binding {
                    b.canary = None;
                }
            });
        }
        if binding.stable.as_ref().is_none_or(|s| s.release != release) {
            for (name, _, _) in self.containers(key, Some(release)).await? {
                self.remove_container(&name).await?;
            }
        }
        self.save().await
    }

    async fn release_metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> Result<ReleaseMetrics> {
        Ok(self.junctions.metrics(key, release, window))
    }

    async fn status(&self, key: &ServiceKey) -> Result<ServiceStatus> {
        let binding = self.junctions.binding(key).unwrap_or_default();
        let containers = self.containers(key, None).await?;
        let count = |release: i64| {
            let all = containers.iter().filter(|c| c.1 == release);
            (all.clone().count() as u32, all.filter(|c| c.2).count() as u32)
        };
        let restarts = async |release: i64| -> Result<Option<u32>> {
            let mut total = 0u32;
            for (name, _, _) in containers.iter().filter(|c| c.1 == release) {
                total = total.saturating_add(self.restarts(name).await?);
            }
            Ok(Some(total))
        };
        let canary_share = binding.canary.as_ref().map_or(0, |(_, p)| *p);
        let mut releases = Vec::new();
        if let Some(stable) = &binding.stable {
            let (replicas, healthy) = count(stable.release);
            releases.push(ReleaseStatus {
                release: stable.release,
                track: Track::Stable,
                percent: if binding.paused { 0 } else { 100 - canary_share },
                replicas,
                healthy,
                restarts: restarts(stable.release).await?,
            });
        }
        if let Some((canary, share)) = &binding.canary {
            let (replicas, healthy) = count(canary.release);
            releases.push(ReleaseStatus {
                release: canary.release,
                track: Track::Canary,
                percent: *share,
                replicas,
                healthy,
                restarts: restarts(canary.release).await?,
            });
        }
        Ok(ServiceStatus { releases })
    }

    async fn pause(&self, key: &ServiceKey) -> Result<()> {
        let _change = self.changes.lock().await;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding {
                b.paused = true;
            }
        });
        for (name, _, running) in self.containers(key, None).await? {
            if running {
                let options = StopContainerOptionsBuilder::default().t(10).build();
                self.docker
                    .stop_container(&name, Some(options))
                    .await
                    .map_err(docker_error("stopping a replica"))?;
            }
        }
        self.save().await
    }

    async fn remove(&self, key: &ServiceKey, removal: Removal) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.junctions.binding(key);
        // Read before the containers go: their mounts name the service's volumes.
        let volumes = self.service_volumes(key).await?;
        self.remove_service_containers(key).await?;
        self.junctions.update(key, |binding| *binding = None);
        self.volume_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        if !removal.keeps_volumes() {
            for volume in volumes {
                let options = RemoveVolumeOptionsBuilder::default().force(true).build();
                match self.docker.remove_volume(&volume, Some(options)).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(docker_error("removing a volume")(e)),
                }
            }
        }
        if let Some(binding) = binding {
            for release in binding.stable.iter().chain(binding.canary.iter().map(|(c, _)| c)) {
                self.junctions.forget(key, release.release);
            }
        }
        // The environment's last service takes its network with it. (A deploy of another service
        // racing this finds the network gone, fails its attempt, and its retry creates it again.)
        self.remove_network_if_unused(key).await?;
        self.save().await
    }

    async fn apply_routes(&self, key: &ServiceKey, routes: &[RouteBinding]) -> Result<bool> {
        let _change = self.changes.lock().await;
        if self.junctions.binding(key).is_none() {
            // Nothing deployed here: the next deploy binds the routes.
            return Ok(true);
        }
        self.junctions.check_routes(key, routes)?;
        self.junctions.update(key, |binding| {
            if let Some(binding) = binding {
                binding.routes = routes.to_vec();
            }
        });
        self.save().await?;
        Ok(true)
    }

    async fn run_job(&self, workload: &Workload, run: &JobRunSpec, log: UnboundedSender<String>) -> Result<i64> {
        self.run_job_container(workload, run, log).await
    }

    async fn usage(&self, key: &ServiceKey) -> Result<Usage> {
        self.sample_usage(key).await
    }

    async fn logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        self.replica_logs(key, request).await
    }

    async fn provision_addon(&self, addon: &AddonWorkload) -> Result<()> {
        self.provision_addon_container(addon).await
    }

    async fn addon_published(&self, key: &AddonKey) -> Result<Option<std::net::SocketAddr>> {
        self.addon_published_addr(key).await
    }

    async fn retire_addon_login(&self, addon: &AddonWorkload, user: &str) -> Result<()> {
        self.retire_addon(addon, user).await
    }

    async fn backup_addon(&self, addon: &AddonWorkload, sink: &mut (dyn AsyncWrite + Send + Unpin)) -> Result<()> {
        self.backup_addon_container(addon, sink).await
    }

    async fn restore_addon(&self, addon: &AddonWorkload, source: &mut (dyn AsyncRead + Send + Unpin)) -> Result<()> {
        self.restore_addon_container(addon, source).await
    }

    async fn remove_addon(&self, key: &AddonKey, keep_data: bool) -> Result<()> {
        self.remove_addon_container(key, keep_data).await
    }
}
