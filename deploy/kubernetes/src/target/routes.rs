//! Routes applied without a deploy (`apply_routes`, from a `route-sync` job): the running
//! tracks' Ingresses rendered again, as a deploy renders them, for the routes given.

use enclii_deploy_contract::{RouteBinding, ServiceKey};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;

use super::canary::stored_promotion;
use super::{KubernetesTarget, Result};
use crate::manifests::{self, IngressInput};

impl KubernetesTarget {
    /// Makes the stable Ingress — and, with a canary running, the canary Ingress and the stable
    /// Ingress its pending promotion holds, so `promote` does not bring the old routes back —
    /// serve exactly `routes`; with none, the Ingresses are deleted. `Ok(false)` when no release
    /// of the service runs in the environment: nothing is written, the next deploy binds them.
    pub(super) async fn apply_service_routes(&self, key: &ServiceKey, routes: &[RouteBinding]) -> Result<bool> {
        let ns = manifests::namespace_name(key);
        let stable_name = manifests::stable_name(key);
        let canary_name = manifests::canary_name(key);
        // The stable Deployment is what a deploy checks too: without it nothing runs.
        let Some(stable) = self.get_opt::<Deployment>(&ns, &stable_name).await? else {
            return Ok(false);
        };
        // Everything is read before anything is written, so a failed read changes nothing.
        let canary = match self.get_opt::<Deployment>(&ns, &canary_name).await? {
            Some(deployment) => {
                // A canary without an Ingress (it had no routes) starts at 0 %, which is what it
                // served and what `status` reports; the next `shift` sets its share.
                let weight = self.canary_weight(&ns, &canary_name).await?;
                let pending = match self.get_opt::<ConfigMap>(&ns, &canary_name).await? {
                    Some(config_map) => Some((stored_promotion(&config_map)?, config_map)),
                    None => None,
                };
                Some((deployment, weight, pending))
            }
            None => None,
        };

        let input = IngressInput::of_deployment(key, &stable, routes);
        self.put_ingress(&ns, &stable_name, manifests::stable_ingress(&input, &self.config))
            .await?;
        if let Some((deployment, weight, pending)) = canary {
            let input = IngressInput::of_deployment(key, &deployment, routes);
            let ingress = manifests::canary_ingress(&input, &self.config, weight);
            self.put_ingress(&ns, &canary_name, ingress).await?;
            if let Some((mut promoted, config_map)) = pending {
                let input = IngressInput::of_deployment(key, &promoted.deployment, routes);
                promoted.ingress = manifests::stable_ingress(&input, &self.config);
                let labels = config_map
                    .metadata
                    .labels
                    .as_ref()
                    .map(manifests::own_labels)
                    .unwrap_or_default();
                self.apply(&manifests::promotion(key, labels, &promoted)).await?;
            }
        }
        tracing::info!(service = %key, routes = routes.len(), "routes applied on kubernetes");
        Ok(true)
    }

    /// Applies the track's Ingress, or deletes it when the track has none to serve.
    async fn put_ingress(&self, ns: &str, name: &str, ingress: Option<Ingress>) -> Result<()> {
        match ingress {
            Some(ingress) => self.apply(&ingress).await.map(|_| ()),
            None => self.delete::<Ingress>(ns, name).await,
        }
    }
}
