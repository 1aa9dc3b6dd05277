//! [`KubernetesTarget`]: the API calls. Every write is a server-side apply (field manager
//! `enclii`, forced), so a retried deploy converges on the same objects; deletes treat "not
//! found" as done. What the objects are is decided in [`crate::manifests`].
//!
//! The [`Target`] implementation delegates to its parts: server-side apply and the service-wide
//! writes (`apply`), deploys and rollout polling/undo (`rollout`), ingress-nginx canaries
//! (`canary`), routes applied without a deploy (`routes`), PromQL and pod metrics (`metrics`),
//! one-off jobs (`jobs`), runtime logs (`logs`), add-ons and their admin runs (`addons`).

mod addons;
mod apply;
mod canary;
mod jobs;
mod logs;
mod metrics;
mod rollout;
mod routes;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use enclii_deploy_contract::model::{AddonKey, AddonWorkload};
use enclii_deploy_contract::{
    DeployError, DeployOutcome, JobRunSpec, LogLines, LogRequest, ReleaseMetrics, Removal, Rollout, RouteBinding,
    ServiceKey, ServiceStatus, Target, Track, Usage, Workload,
};
use enclii_domain::addons::{AddonEndpoint, AddonKind};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PatchParams;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::KubernetesConfig;
use crate::manifests::{self, MANAGER};

pub use self::metrics::{MetricQueries, cpu_millis, metric_queries};

type Result<T, E = DeployError> = std::result::Result<T, E>;

pub use enclii_deploy_contract::target::JOB_TIMEOUT_EXIT_CODE;

/// Deploys to one Kubernetes cluster.
pub struct KubernetesTarget {
    client: Client,
    config: KubernetesConfig,
    prometheus: OnceLock<reqwest::Client>,
}

impl KubernetesTarget {
    pub fn new(client: Client, config: KubernetesConfig) -> Self {
        KubernetesTarget {
            client,
            config,
            prometheus: OnceLock::new(),
        }
    }

    /// Connects with the in-cluster service account, or else `KUBECONFIG` / `~/.kube/config`.
    /// The process must have installed a rustls crypto provider first.
    pub async fn infer(config: KubernetesConfig) -> Result<Self> {
        let client = Client::try_default()
            .await
            .map_err(|e| DeployError::kubernetes(format!("no cluster configuration found: {e}"), e))?;
        Ok(Self::new(client, config))
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }
}

#[async_trait]
impl Target for KubernetesTarget {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn deploy(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome> {
        self.deploy_workload(workload, rollout).await
    }

    async fn shift(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()> {
        self.set_canary_weight(key, release, percent).await
    }

    async fn promote(&self, key: &ServiceKey, release: i64) -> Result<()> {
        self.promote_canary(key, release).await
    }

    async fn abort_canary(&self, key: &ServiceKey, release: i64) -> Result<()> {
        self.abort_canary_release(key, release).await
    }

    async fn release_metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> Result<ReleaseMetrics> {
        self.release_metrics_of(key, release, window).await
    }

    async fn status(&self, key: &ServiceKey) -> Result<ServiceStatus> {
        self.service_status(key).await
    }

    async fn pause(&self, key: &ServiceKey) -> Result<()> {
        self.pause_service(key).await
    }

    async fn remove(&self, key: &ServiceKey, removal: Removal) -> Result<()> {
        self.remove_service(key, removal).await
    }

    async fn run_job(&self, workload: &Workload, run: &JobRunSpec, log: UnboundedSender<String>) -> Result<i64> {
        self.run_job_to_end(workload, run, log).await
    }

    async fn apply_routes(&self, key: &ServiceKey, routes: &[RouteBinding]) -> Result<bool> {
        self.apply_service_routes(key, routes).await
    }

    /// The add-on's headless Service in the cluster's DNS, e.g.
    /// `enclii-addon-db.enclii-shop-prod.svc.cluster.local`.
    fn addon_endpoint(&self, key: &AddonKey, kind: AddonKind) -> AddonEndpoint {
        self.addon_endpoint_of(key, kind)
    }

    async fn provision_addon(&self, addon: &AddonWorkload) -> Result<()> {
        self.provision_addon_objects(addon).await
    }

    async fn retire_addon_login(&self, addon: &AddonWorkload, user: &str) -> Result<()> {
        self.retire_addon(addon, user).await
    }

    async fn remove_addon(&self, key: &AddonKey, keep_data: bool) -> Result<()> {
        self.remove_addon_objects(key, keep_data).await
    }

    async fn usage(&self, key: &ServiceKey) -> Result<Usage> {
        self.pod_usage(key).await
    }

    async fn logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        self.runtime_logs(key, request).await
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn update_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// What the API answers for the log of a container still being created.
fn is_bad_request(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 400)
}

fn api_error(what: &str, e: kube::Error) -> DeployError {
    let message = match &e {
        kube::Error::Api(status) => format!("{what}: {} ({} {})", status.message, status.code, status.reason),
        other => format!("{what}: {other}"),
    };
    DeployError::kubernetes(message, e)
}

fn count(n: Option<i32>) -> u32 {
    u32::try_from(n.unwrap_or(0)).unwrap_or(0)
}

fn release_label(labels: &std::collections::BTreeMap<String, String>) -> Option<i64> {
    labels.get(manifests::LABEL_RELEASE)?.parse().ok()
}

fn release_of(deployment: &Deployment) -> Option<i64> {
    release_label(deployment.labels())
}

fn track_of(deployment: &Deployment) -> Option<Track> {
    match deployment.labels().get(manifests::LABEL_TRACK)?.as_str() {
        "stable" => Some(Track::Stable),
        "canary" => Some(Track::Canary),
        _ => None,
    }
}
