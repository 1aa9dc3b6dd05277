//! Server-side apply and its companions: the typed namespaced calls every other part uses, the
//! environment's objects, and the service-wide writes (`pause`, `remove`).

use std::fmt::Debug;

use enclii_deploy_contract::{DeployError, Removal, ServiceKey, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{KubernetesTarget, Result, api_error, apply_params, is_not_found, update_params};
use crate::manifests::{self, EnvironmentObjects};

impl KubernetesTarget {
    pub(super) fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Server-side applies a namespaced object.
    pub(super) async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        self.api::<K>(&ns)
            .patch(&name, &apply_params(), &Patch::Apply(obj))
            .await
            .map_err(|e| api_error(&format!("applying {} {ns}/{name}", K::kind(&())), e))
    }

    /// Deletes a namespaced object; one already gone is fine.
    pub(super) async fn delete<K>(&self, ns: &str, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>(ns).delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("deleting {} {ns}/{name}", K::kind(&())), e)),
        }
    }

    pub(super) async fn list<K>(&self, ns: &str, selector: &str) -> Result<Vec<K>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>(ns).list(&ListParams::default().labels(selector)).await {
            Ok(list) => Ok(list.items),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(api_error(&format!("listing {} in {ns} ({selector})", K::kind(&())), e)),
        }
    }

    pub(super) async fn get_opt<K>(&self, ns: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        self.api::<K>(ns)
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("reading {} {ns}/{name}", K::kind(&())), e))
    }

    /// Deletes every object of kind `K` the selector matches (list, then delete each: works for
    /// every kind, including those without `deletecollection`).
    pub(super) async fn delete_matching<K>(&self, ns: &str, selector: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        for obj in self.list::<K>(ns, selector).await? {
            self.delete::<K>(ns, &obj.name_any()).await?;
        }
        Ok(())
    }

    /// The namespace, its quota and policies, then the service's secrets and volumes.
    pub(super) async fn apply_environment(&self, workload: &Workload) -> Result<()> {
        let env = manifests::environment_objects(&workload.key, &workload.quota, &self.config);
        self.apply_environment_objects(&env).await?;
        let config = manifests::service_config_objects(workload);
        for secret in &config.secrets {
            self.apply_secret(secret).await?;
        }
        for claim in &config.volumes {
            self.apply(claim).await?;
        }
        Ok(())
    }

    /// The namespace, then its quota (when it has one) and network policies.
    pub(super) async fn apply_environment_objects(&self, env: &EnvironmentObjects) -> Result<()> {
        let name = env.namespace.name_any();
        Api::<Namespace>::all(self.client.clone())
            .patch(&name, &apply_params(), &Patch::Apply(&env.namespace))
            .await
            .map_err(|e| api_error(&format!("applying Namespace {name}"), e))?;
        if let Some(quota) = &env.quota {
            self.apply(quota).await?;
        }
        for policy in &env.network_policies {
            self.apply(policy).await?;
        }
        Ok(())
    }

    /// Like [`Self::apply`], but a failure never carries the server's message, which could
    /// quote the values.
    pub(super) async fn apply_secret(&self, secret: &Secret) -> Result<()> {
        let ns = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        match self
            .api::<Secret>(&ns)
            .patch(&name, &apply_params(), &Patch::Apply(secret))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match &e {
                kube::Error::Api(status) => DeployError::kubernetes(
                    format!(
                        "applying Secret {ns}/{name}: rejected ({} {})",
                        status.code, status.reason
                    ),
                    e,
                ),
                _ => DeployError::kubernetes(format!("applying Secret {ns}/{name}: request failed ({e})"), e),
            }),
        }
    }

    pub(super) async fn pause_service(&self, key: &ServiceKey) -> Result<()> {
        let ns = manifests::namespace_name(key);
        let selector = manifests::service_selector(key);
        for deployment in self.list::<Deployment>(&ns, &selector).await? {
            self.scale(&ns, &deployment.name_any(), 0).await?;
        }
        let suspend = serde_json::json!({ "spec": { "suspend": true } });
        for cron_job in self.list::<CronJob>(&ns, &selector).await? {
            let name = cron_job.name_any();
            self.api::<CronJob>(&ns)
                .patch(&name, &update_params(), &Patch::Merge(&suspend))
                .await
                .map_err(|e| api_error(&format!("suspending CronJob {ns}/{name}"), e))?;
        }
        Ok(())
    }

    /// Deletes the service's objects; the whole namespace for an environment's removal, unless
    /// its volumes are kept (their claims live in it).
    pub(super) async fn remove_service(&self, key: &ServiceKey, removal: Removal) -> Result<()> {
        let ns = manifests::namespace_name(key);
        if removal == (Removal::Environment { keep_volumes: false }) {
            return match Api::<Namespace>::all(self.client.clone())
                .delete(&ns, &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(api_error(&format!("deleting Namespace {ns}"), e)),
            };
        }
        let selector = manifests::service_selector(key);
        self.delete_matching::<Ingress>(&ns, &selector).await?;
        self.delete_matching::<Service>(&ns, &selector).await?;
        self.delete_matching::<HorizontalPodAutoscaler>(&ns, &selector).await?;
        self.delete_matching::<Deployment>(&ns, &selector).await?;
        self.delete_matching::<CronJob>(&ns, &selector).await?;
        self.delete_matching::<Job>(&ns, &selector).await?;
        self.delete_matching::<ConfigMap>(&ns, &selector).await?;
        self.delete_matching::<Secret>(&ns, &selector).await?;
        if removal.keeps_volumes() {
            return Ok(());
        }
        self.delete_matching::<PersistentVolumeClaim>(&ns, &selector).await
    }
}
