//! Deploys and the stable track's rollout: apply, poll until healthy, undo on failure; and the
//! service's status as its Deployments report it.

use enclii_deploy_contract::{
    DeployError, DeployOutcome, ReleaseStatus, Rollout, ServiceKey, ServiceStatus, Track, Workload,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Patch;
use tokio::time::Instant;

use super::{KubernetesTarget, Result, api_error, count, release_of, track_of, update_params};
use crate::manifests::{self, StableObjects};

impl KubernetesTarget {
    pub(super) async fn deploy_workload(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome> {
        workload.check_quota()?;
        let key = &workload.key;
        let ns = manifests::namespace_name(key);
        let previous = self.get_opt::<Deployment>(&ns, &manifests::stable_name(key)).await?;
        self.apply_environment(workload).await?;
        let url = workload.routes.first().map(|r| {
            let scheme = if r.tls { "https" } else { "http" };
            format!("{scheme}://{}{}", r.host, r.path)
        });
        // A canary needs a different release already serving; otherwise it is a plain rollout
        // (as on the Docker target).
        let serving_other = previous.as_ref().is_some_and(|d| {
            let serving = d.metadata.labels.as_ref().and_then(|l| l.get(manifests::LABEL_RELEASE));
            serving.is_some_and(|r| *r != workload.release.to_string())
        });
        let (replicas, track) = match rollout {
            Rollout::Canary { percent } if percent < 100 && serving_other => {
                (self.deploy_canary(workload, percent).await?, Track::Canary)
            }
            _ => {
                let stable = manifests::stable_objects(workload, &self.config);
                (
                    self.roll_out_stable(key, workload.release, &stable, previous).await?,
                    Track::Stable,
                )
            }
        };
        tracing::info!(service = %key, release = workload.release, ?track, replicas, "deployed on kubernetes");
        Ok(DeployOutcome { replicas, url, track })
    }

    /// Applies the stable Deployment, waits for it, then routes (Service, Ingress), the HPA and
    /// the cron jobs to it, removes any canary and what an earlier spec had but this one has not.
    /// When the rollout fails, the Deployment goes back to `previous` (or is deleted).
    pub(super) async fn roll_out_stable(
        &self,
        key: &ServiceKey,
        release: i64,
        stable: &StableObjects,
        previous: Option<Deployment>,
    ) -> Result<u32> {
        let ns = manifests::namespace_name(key);
        let name = manifests::stable_name(key);
        self.apply(&stable.deployment).await?;
        self.resume_if_autoscaled(&ns, &name, stable, previous.as_ref()).await?;
        let ready = match self.wait_rollout(&ns, &name).await? {
            Ok(ready) => ready,
            Err(detail) => {
                self.undo_stable(&ns, &name, previous).await?;
                return Err(self.unhealthy(release, detail));
            }
        };
        if let Some(service) = &stable.service {
            self.apply(service).await?;
        }
        if let Some(ingress) = &stable.ingress {
            self.apply(ingress).await?;
        }
        if let Some(autoscaler) = &stable.autoscaler {
            self.apply(autoscaler).await?;
        }
        for cron_job in &stable.cron_jobs {
            self.apply(cron_job).await?;
        }
        self.remove_canary(&ns, &manifests::canary_name(key)).await?;
        let stale = manifests::stale_stable_selector(key, release);
        self.delete_matching::<CronJob>(&ns, &stale).await?;
        self.delete_matching::<HorizontalPodAutoscaler>(&ns, &stale).await?;
        self.delete_matching::<Ingress>(&ns, &stale).await?;
        self.delete_matching::<Service>(&ns, &stale).await?;
        Ok(ready)
    }

    /// An autoscaled Deployment's replicas belong to the HPA, which does nothing at 0: after a
    /// `pause`, a deploy scales it back to the HPA's minimum.
    async fn resume_if_autoscaled(
        &self,
        ns: &str,
        name: &str,
        stable: &StableObjects,
        previous: Option<&Deployment>,
    ) -> Result<()> {
        let paused = previous.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(0);
        let min = stable
            .autoscaler
            .as_ref()
            .and_then(|h| h.spec.as_ref())
            .and_then(|s| s.min_replicas);
        match min {
            Some(min) if paused => self.scale(ns, name, min).await,
            _ => Ok(()),
        }
    }

    pub(super) async fn scale(&self, ns: &str, name: &str, replicas: i32) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.api::<Deployment>(ns)
            .patch_scale(name, &update_params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("scaling Deployment {ns}/{name} to {replicas}"), e))
    }

    /// Puts the Deployment back as it was before this deploy, or removes it if it is new.
    async fn undo_stable(&self, ns: &str, name: &str, previous: Option<Deployment>) -> Result<()> {
        match previous {
            Some(previous) => self.apply(&reapplicable(previous)).await.map(|_| ()),
            None => self.delete::<Deployment>(ns, name).await,
        }
    }

    /// Polls the Deployment until every replica runs the current template and is ready:
    /// `Ok(Ok(ready))`, or `Ok(Err(why))` once the rollout timeout has passed.
    pub(super) async fn wait_rollout(&self, ns: &str, name: &str) -> Result<Result<u32, String>> {
        let deadline = Instant::now() + self.config.rollout_timeout;
        loop {
            let deployment = self.get_opt::<Deployment>(ns, name).await?;
            let progress = deployment.as_ref().map(rollout_progress);
            if let Some(Ok(ready)) = progress {
                return Ok(Ok(ready));
            }
            if Instant::now() >= deadline {
                let detail = match progress {
                    Some(Err(detail)) => detail,
                    _ => format!("Deployment {ns}/{name} disappeared"),
                };
                return Ok(Err(detail));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    pub(super) fn unhealthy(&self, release: i64, detail: String) -> DeployError {
        DeployError::Unhealthy {
            release,
            waited_secs: self.config.rollout_timeout.as_secs(),
            detail,
        }
    }

    pub(super) async fn service_status(&self, key: &ServiceKey) -> Result<ServiceStatus> {
        let ns = manifests::namespace_name(key);
        let deployments = self.list::<Deployment>(&ns, &manifests::service_selector(key)).await?;
        let has_canary = deployments.iter().any(|d| track_of(d) == Some(Track::Canary));
        let canary_percent = if has_canary {
            self.canary_weight(&ns, &manifests::canary_name(key)).await?
        } else {
            0
        };
        let mut releases: Vec<ReleaseStatus> = deployments
            .iter()
            .filter_map(|d| {
                let track = track_of(d)?;
                let status = d.status.clone().unwrap_or_default();
                Some(ReleaseStatus {
                    release: release_of(d)?,
                    track,
                    percent: if track == Track::Canary {
                        canary_percent
                    } else {
                        100 - canary_percent
                    },
                    replicas: count(status.replicas),
                    healthy: count(status.ready_replicas),
                    restarts: None,
                })
            })
            .collect();
        releases.sort_by_key(|r| r.track == Track::Canary);
        Ok(ServiceStatus { releases })
    }
}

/// A Deployment as read, made fit to apply again: without the fields the server owns.
fn reapplicable(mut deployment: Deployment) -> Deployment {
    let meta = &mut deployment.metadata;
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("deployment.kubernetes.io/revision");
    }
    deployment.status = None;
    deployment
}

/// `Ok(ready replicas)` once the controller has seen the latest spec and every replica is
/// updated and ready; otherwise why not, preferring the controller's own condition message.
fn rollout_progress(deployment: &Deployment) -> Result<u32, String> {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    let (total, updated, ready) = (
        status.replicas.unwrap_or(0),
        status.updated_replicas.unwrap_or(0),
        status.ready_replicas.unwrap_or(0),
    );
    if observed >= generation && updated == desired && ready == desired && total == desired {
        return Ok(count(Some(ready)));
    }
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status != "True" || c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .find_map(|c| c.message);
    Err(condition.unwrap_or_else(|| {
        format!(
            "{ready} of {desired} replicas ready, {updated} updated (observed generation {observed} of {generation})"
        )
    }))
}
