//! The canary beside the stable release: its objects, its ingress-nginx canary weight, its
//! promotion and its removal.

use enclii_deploy_contract::{DeployError, ServiceKey, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::Patch;

use super::{KubernetesTarget, Result, api_error, is_not_found, release_label, release_of, update_params};
use crate::manifests::{self, StableObjects};

impl KubernetesTarget {
    /// Starts the canary beside the stable release and, once it is healthy, gives it `percent`.
    pub(super) async fn deploy_canary(&self, workload: &Workload, percent: u8) -> Result<u32> {
        let canary = manifests::canary_objects(workload, &self.config, percent);
        let ns = manifests::namespace_name(&workload.key);
        let name = manifests::canary_name(&workload.key);
        self.apply(&canary.deployment).await?;
        if let Some(service) = &canary.service {
            self.apply(service).await?;
        }
        self.apply(&canary.promotion).await?;
        let ready = match self.wait_rollout(&ns, &name).await? {
            Ok(ready) => ready,
            Err(detail) => {
                self.remove_canary(&ns, &name).await?;
                return Err(self.unhealthy(workload.release, detail));
            }
        };
        if let Some(ingress) = &canary.ingress {
            self.apply(ingress).await?;
        }
        Ok(ready)
    }

    /// Traffic first (Ingress), then the Service, the Deployment and the pending promotion.
    pub(super) async fn remove_canary(&self, ns: &str, name: &str) -> Result<()> {
        self.delete::<Ingress>(ns, name).await?;
        self.delete::<Service>(ns, name).await?;
        self.delete::<Deployment>(ns, name).await?;
        self.delete::<ConfigMap>(ns, name).await
    }

    /// The canary's Deployment if it runs `release`; otherwise `NotFound` saying what runs.
    async fn canary_of(&self, key: &ServiceKey, release: i64) -> Result<Deployment> {
        let ns = manifests::namespace_name(key);
        let name = manifests::canary_name(key);
        let deployment = self
            .get_opt::<Deployment>(&ns, &name)
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("{key} has no canary running")))?;
        match release_of(&deployment) {
            Some(r) if r == release => Ok(deployment),
            other => Err(DeployError::NotFound(format!(
                "the canary of {key} is release {}, not {release}",
                other.map_or("unknown".into(), |r| r.to_string())
            ))),
        }
    }

    pub(super) async fn canary_weight(&self, ns: &str, name: &str) -> Result<u8> {
        let ingress = self.get_opt::<Ingress>(ns, name).await?;
        Ok(ingress
            .and_then(|i| i.annotations().get(manifests::ANNOTATION_CANARY_WEIGHT).cloned())
            .and_then(|w| w.parse().ok())
            .unwrap_or(0))
    }

    pub(super) async fn set_canary_weight(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()> {
        self.canary_of(key, release).await?;
        let ns = manifests::namespace_name(key);
        let name = manifests::canary_name(key);
        let patch = serde_json::json!({
            "metadata": { "annotations": { manifests::ANNOTATION_CANARY_WEIGHT: percent.to_string() } }
        });
        match self
            .api::<Ingress>(&ns)
            .patch(&name, &update_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // A service without routes has no canary Ingress: nothing to split.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(
                &format!("setting the canary weight of Ingress {ns}/{name}"),
                e,
            )),
        }
    }

    pub(super) async fn promote_canary(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let ns = manifests::namespace_name(key);
        let canary = manifests::canary_name(key);
        let pending = self
            .get_opt::<ConfigMap>(&ns, &canary)
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("{key} has no canary to promote")))?;
        if release_label(pending.labels()) != Some(release) {
            return Err(DeployError::NotFound(format!(
                "release {release} is not the canary of {key}"
            )));
        }
        let stable = stored_promotion(&pending)?;
        let previous = self.get_opt::<Deployment>(&ns, &manifests::stable_name(key)).await?;
        self.roll_out_stable(key, release, &stable, previous).await?;
        Ok(())
    }

    pub(super) async fn abort_canary_release(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let ns = manifests::namespace_name(key);
        let name = manifests::canary_name(key);
        if let Some(running) = self.get_opt::<Deployment>(&ns, &name).await?
            && release_of(&running) != Some(release)
        {
            return Err(DeployError::NotFound(format!(
                "release {release} is not the canary of {key}"
            )));
        }
        self.remove_canary(&ns, &name).await
    }
}

/// The stable objects a canary's ConfigMap holds for `promote`.
pub(super) fn stored_promotion(pending: &ConfigMap) -> Result<StableObjects> {
    pending
        .data
        .as_ref()
        .and_then(|d| d.get(manifests::PROMOTION_KEY))
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| {
            DeployError::kubernetes_message(format!(
                "ConfigMap {}/{} holds no valid stable objects",
                pending.namespace().unwrap_or_default(),
                pending.name_any()
            ))
        })
}
