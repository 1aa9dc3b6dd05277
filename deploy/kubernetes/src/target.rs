//! [`KubernetesTarget`]: the API calls. Every write is a server-side apply (field manager
//! `enclii`, forced), so a retried deploy converges on the same objects; deletes treat "not
//! found" as done. What the objects are is decided in [`crate::manifests`].

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use enclii_deploy_contract::{
    DeployError, DeployOutcome, JobRunSpec, LogLines, LogRequest, LogStream, ReleaseMetrics, ReleaseStatus, Rollout,
    RuntimeLogLine, ServiceKey, ServiceStatus, Target, Track, Usage, Workload,
};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::config::KubernetesConfig;
use crate::manifests::{self, MANAGER, StableObjects};

type Result<T, E = DeployError> = std::result::Result<T, E>;

pub use enclii_deploy_contract::target::JOB_TIMEOUT_EXIT_CODE;
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

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

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Server-side applies a namespaced object.
    async fn apply<K>(&self, obj: &K) -> Result<K>
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
    async fn delete<K>(&self, ns: &str, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>(ns).delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("deleting {} {ns}/{name}", K::kind(&())), e)),
        }
    }

    async fn list<K>(&self, ns: &str, selector: &str) -> Result<Vec<K>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>(ns).list(&ListParams::default().labels(selector)).await {
            Ok(list) => Ok(list.items),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(api_error(&format!("listing {} in {ns} ({selector})", K::kind(&())), e)),
        }
    }

    async fn get_opt<K>(&self, ns: &str, name: &str) -> Result<Option<K>>
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
    async fn delete_matching<K>(&self, ns: &str, selector: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        for obj in self.list::<K>(ns, selector).await? {
            self.delete::<K>(ns, &obj.name_any()).await?;
        }
        Ok(())
    }

    /// The namespace, its quota and policies, then the service's secrets and volumes.
    async fn apply_environment(&self, workload: &Workload) -> Result<()> {
        let env = manifests::environment_objects(&workload.key, &workload.quota, &self.config);
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
        let config = manifests::service_config_objects(workload);
        for secret in &config.secrets {
            self.apply_secret(secret).await?;
        }
        for claim in &config.volumes {
            self.apply(claim).await?;
        }
        Ok(())
    }

    /// Like [`Self::apply`], but a failure never carries the server's message, which could
    /// quote the values.
    async fn apply_secret(&self, secret: &Secret) -> Result<()> {
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

    /// Applies the stable Deployment, waits for it, then routes (Service, Ingress), the HPA and
    /// the cron jobs to it, removes any canary and what an earlier spec had but this one has not.
    /// When the rollout fails, the Deployment goes back to `previous` (or is deleted).
    async fn roll_out_stable(
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

    async fn scale(&self, ns: &str, name: &str, replicas: i32) -> Result<()> {
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
    async fn wait_rollout(&self, ns: &str, name: &str) -> Result<Result<u32, String>> {
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

    fn unhealthy(&self, release: i64, detail: String) -> DeployError {
        DeployError::Unhealthy {
            release,
            waited_secs: self.config.rollout_timeout.as_secs(),
            detail,
        }
    }

    /// Starts the canary beside the stable release and, once it is healthy, gives it `percent`.
    async fn deploy_canary(&self, workload: &Workload, percent: u8) -> Result<u32> {
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
    async fn remove_canary(&self, ns: &str, name: &str) -> Result<()> {
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

    fn prometheus(&self) -> Result<reqwest::Client> {
        if let Some(client) = self.prometheus.get() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DeployError::metrics(format!("cannot build the HTTP client: {e}"), e))?;
        Ok(self.prometheus.get_or_init(|| client).clone())
    }

    /// One instant query: the first sample's value, `None` for an empty result or NaN.
    async fn query(&self, base: &str, promql: &str) -> Result<Option<f64>> {
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let response = self
            .prometheus()?
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| DeployError::metrics(format!("Prometheus at {base}: {e}"), e))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| DeployError::metrics(format!("Prometheus at {base} answered {status}: {e}"), e))?;
        if body["status"] != "success" {
            return Err(DeployError::metrics_message(format!(
                "Prometheus at {base} rejected `{promql}`: {}",
                body["error"].as_str().unwrap_or("no error message")
            )));
        }
        Ok(body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite()))
    }

    /// The Service name serving `release` (stable or canary), from the Deployments' labels.
    async fn serving_name(&self, key: &ServiceKey, release: i64) -> Result<String> {
        let ns = manifests::namespace_name(key);
        let deployments = self.list::<Deployment>(&ns, &manifests::service_selector(key)).await?;
        deployments
            .iter()
            .find(|d| release_of(d) == Some(release))
            .map(|d| d.name_any())
            .ok_or_else(|| DeployError::NotFound(format!("release {release} of {key} is not running")))
    }

    async fn canary_weight(&self, ns: &str, name: &str) -> Result<u8> {
        let ingress = self.get_opt::<Ingress>(ns, name).await?;
        Ok(ingress
            .and_then(|i| i.annotations().get(manifests::ANNOTATION_CANARY_WEIGHT).cloned())
            .and_then(|w| w.parse().ok())
            .unwrap_or(0))
    }

    /// Waits for the run's pod to start, sends its log lines (secret values masked), then
    /// returns its container's exit code.
    async fn follow_job(&self, ns: &str, name: &str, masks: &[String], log: &UnboundedSender<String>) -> Result<i64> {
        let pods = self.api::<Pod>(ns);
        let pod = self.started_pod(ns, name).await?;
        let lines = pods
            .log_stream(
                &pod,
                &LogParams {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| api_error(&format!("reading the log of Pod {ns}/{pod}"), e))?
            .lines();
        futures::pin_mut!(lines);
        while let Some(line) = lines
            .try_next()
            .await
            .map_err(|e| DeployError::kubernetes(format!("reading the log of Pod {ns}/{pod}: {e}"), e))?
        {
            let _ = log.send(mask(line, masks));
        }
        loop {
            if let Some(code) = self.get_opt::<Pod>(ns, &pod).await?.as_ref().and_then(exit_code) {
                return Ok(code);
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The name of the job's pod once it is past `Pending`.
    async fn started_pod(&self, ns: &str, job: &str) -> Result<String> {
        let selector = format!("{JOB_NAME_LABEL}={job}");
        loop {
            let pods = self.list::<Pod>(ns, &selector).await?;
            let started = pods.iter().find(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Running" | "Succeeded" | "Failed"))
            });
            if let Some(pod) = started {
                return Ok(pod.name_any());
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

#[async_trait]
impl Target for KubernetesTarget {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn deploy(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome> {
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

    async fn shift(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()> {
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

    async fn promote(&self, key: &ServiceKey, release: i64) -> Result<()> {
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
        let stable: StableObjects = pending
            .data
            .as_ref()
            .and_then(|d| d.get(manifests::PROMOTION_KEY))
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| {
                DeployError::kubernetes_message(format!("ConfigMap {ns}/{canary} holds no valid stable objects"))
            })?;
        let previous = self.get_opt::<Deployment>(&ns, &manifests::stable_name(key)).await?;
        self.roll_out_stable(key, release, &stable, previous).await?;
        Ok(())
    }

    async fn abort_canary(&self, key: &ServiceKey, release: i64) -> Result<()> {
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

    async fn release_metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> Result<ReleaseMetrics> {
        let Some(base) = self.config.prometheus_url.clone() else {
            return Err(DeployError::metrics_message(
                "no Prometheus configured for the Kubernetes target: set its URL (prometheus_url, e.g. \
                 ENCLII_PROMETHEUS_URL=http://prometheus.monitoring:9090) to analyse canaries",
            ));
        };
        let service = self.serving_name(key, release).await?;
        let queries = metric_queries(&manifests::namespace_name(key), &service, window);
        let requests = self.query(&base, &queries.requests).await?.unwrap_or(0.0);
        let errors = self.query(&base, &queries.errors).await?.unwrap_or(0.0);
        let p95 = self.query(&base, &queries.p95).await?;
        Ok(ReleaseMetrics {
            requests: requests.round() as u64,
            errors: errors.round() as u64,
            p95: p95.filter(|_| requests >= 0.5).map(Duration::from_secs_f64),
        })
    }

    async fn status(&self, key: &ServiceKey) -> Result<ServiceStatus> {
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
                })
            })
            .collect();
        releases.sort_by_key(|r| r.track == Track::Canary);
        Ok(ServiceStatus { releases })
    }

    async fn pause(&self, key: &ServiceKey) -> Result<()> {
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

    async fn remove(&self, key: &ServiceKey, whole_environment: bool) -> Result<()> {
        let ns = manifests::namespace_name(key);
        if whole_environment {
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
        self.delete_matching::<PersistentVolumeClaim>(&ns, &selector).await
    }

    async fn run_job(&self, workload: &Workload, run: &JobRunSpec, log: UnboundedSender<String>) -> Result<i64> {
        let ns = manifests::namespace_name(&workload.key);
        let name = manifests::job_run_name(&workload.key, &run.job, run.run, run.attempt);
        let deadline_seconds = i64::try_from(run.timeout.as_secs().max(1)).unwrap_or(i64::MAX);
        let job = manifests::job_run(workload, &run.job, run.args.clone(), name.clone(), deadline_seconds);
        self.apply_environment(workload).await?;
        self.apply(&job).await?;
        let masks: Vec<String> = workload
            .secrets
            .iter()
            .flat_map(|s| s.entries.iter().map(|(_, v)| v.expose().to_string()))
            .filter(|v| !v.is_empty())
            .collect();
        let deadline = Instant::now() + run.timeout;
        match tokio::time::timeout_at(deadline, self.follow_job(&ns, &name, &masks, &log)).await {
            Ok(code) => code,
            Err(_) => {
                self.delete::<Job>(&ns, &name).await?;
                let _ = log.send(format!(
                    "enclii: job {} timed out after {} s and was stopped",
                    run.job,
                    run.timeout.as_secs()
                ));
                Ok(JOB_TIMEOUT_EXIT_CODE)
            }
        }
    }

    async fn usage(&self, key: &ServiceKey) -> Result<Usage> {
        let ns = manifests::namespace_name(key);
        let selector = manifests::service_selector(key);
        let pod_metrics = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let metrics = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &pod_metrics)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                api_error(
                    &format!("reading pod metrics in {ns} (is metrics-server installed?)"),
                    e,
                )
            })?;
        let mut usage = Usage {
            replicas: u32::try_from(metrics.items.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        for pod in &metrics.items {
            for container in pod.data["containers"].as_array().into_iter().flatten() {
                usage.cpu_millis += container["usage"]["cpu"].as_str().map_or(0.0, cpu_millis);
                usage.memory_bytes += container["usage"]["memory"].as_str().map_or(0, memory_bytes);
            }
        }
        for claim in self.list::<PersistentVolumeClaim>(&ns, &selector).await? {
            usage.volume_bytes += claim_bytes(&claim);
        }
        Ok(usage)
    }

    async fn logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        let ns = manifests::namespace_name(key);
        // The replicas: pods of the service's tracks (not its job runs).
        let selector = format!("{},{}", manifests::service_selector(key), manifests::LABEL_TRACK);
        let pods = self.api::<Pod>(&ns);
        let params = LogParams {
            follow: request.follow,
            tail_lines: Some(i64::from(request.tail)),
            timestamps: true,
            ..Default::default()
        };
        let mut streams = Vec::new();
        for pod in self.list::<Pod>(&ns, &selector).await? {
            let name = pod.name_any();
            let reader = match pods.log_stream(&name, &params).await {
                Ok(reader) => reader,
                // A pod gone (or not started) since the list has nothing to show.
                Err(e) if is_not_found(&e) || is_bad_request(&e) => continue,
                Err(e) => return Err(api_error(&format!("reading the log of Pod {ns}/{name}"), e)),
            };
            let replica = name.clone();
            let lines = reader.lines().map(move |line| match line {
                Ok(raw) => Ok(RuntimeLogLine::parse(&replica, LogStream::Combined, &raw)),
                Err(e) => Err(DeployError::kubernetes(
                    format!("reading the log of Pod {replica}: {e}"),
                    e,
                )),
            });
            streams.push(lines.boxed());
        }
        Ok(futures::stream::select_all(streams).boxed())
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

fn exit_code(pod: &Pod) -> Option<i64> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
    Some(i64::from(terminated.exit_code))
}

fn mask(mut line: String, masks: &[String]) -> String {
    for secret in masks {
        if line.contains(secret.as_str()) {
            line = line.replace(secret.as_str(), "***");
        }
    }
    line
}

/// The PromQL of a canary analysis, over ingress-nginx's metrics of one backend Service.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricQueries {
    pub requests: String,
    pub errors: String,
    pub p95: String,
}

pub fn metric_queries(namespace: &str, service: &str, window: Duration) -> MetricQueries {
    let secs = window.as_secs().max(1);
    let selector = format!(r#"exported_namespace="{namespace}",exported_service="{service}""#);
    MetricQueries {
        requests: format!("sum(increase(nginx_ingress_controller_requests{{{selector}}}[{secs}s]))"),
        errors: format!(r#"sum(increase(nginx_ingress_controller_requests{{{selector},status=~"5.."}}[{secs}s]))"#),
        p95: format!(
            "histogram_quantile(0.95, sum by (le) (rate(nginx_ingress_controller_request_duration_seconds_bucket{{{selector}}}[{secs}s])))"
        ),
    }
}

/// A CPU quantity as metrics-server writes it (`12345678n`, `250u`, `5m`, `1`) in millicores.
pub fn cpu_millis(quantity: &str) -> f64 {
    let (number, scale) = if let Some(n) = quantity.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = quantity.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = quantity.strip_suffix('m') {
        (n, 1.0)
    } else {
        (quantity, 1e3)
    };
    number.parse::<f64>().map_or(0.0, |n| n * scale)
}

fn memory_bytes(quantity: &str) -> u64 {
    enclii_domain::spec::parse_memory_bytes(quantity).unwrap_or(0)
}

fn claim_bytes(claim: &PersistentVolumeClaim) -> u64 {
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let requested = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    capacity.or(requested).map_or(0, |q| memory_bytes(&q.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_server_cpu_quantities_become_millicores() {
        assert_eq!(cpu_millis("250000000n"), 250.0);
        assert_eq!(cpu_millis("5m"), 5.0);
        assert_eq!(cpu_millis("2"), 2000.0);
        assert_eq!(cpu_millis("1500u"), 1.5);
    }

    #[test]
    fn secret_values_are_masked_in_job_logs() {
        assert_eq!(mask("token=s3cr3t ok".into(), &["s3cr3t".into()]), "token=*** ok");
    }

    /// Against kube's `tower-test` mock client (no API server runs here): the replicas are the
    /// service's track pods, each one's log read with timestamps and split into lines.
    #[tokio::test]
    async fn mock_runtime_logs_read_each_replica_pod() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let target = KubernetesTarget::new(Client::new(service, "default"), KubernetesConfig::default());
        let server = tokio::spawn(async move {
            let (request, respond) = handle.next_request().await.unwrap();
            assert_eq!(request.uri().path(), "/api/v1/namespaces/enclii-shop-prod/pods");
            let query = request
                .uri()
                .query()
                .unwrap_or_default()
                .replace("%2C", ",")
                .replace("%2F", "/")
                .replace("%3D", "=");
            assert!(query.contains("enclii.dev/service=api,enclii.dev/track"), "{query}");
            let pods = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [{"metadata": {"name": "api-7d9-x1", "namespace": "enclii-shop-prod"}}]});
            respond.send_response(Response::new(Body::from(serde_json::to_vec(&pods).unwrap())));
            let (request, respond) = handle.next_request().await.unwrap();
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/enclii-shop-prod/pods/api-7d9-x1/log"
            );
            let query = request.uri().query().unwrap_or_default();
            assert!(
                query.contains("tailLines=5") && query.contains("timestamps=true"),
                "{query}"
            );
            let text = "2026-11-29T10:00:00.000000001Z listening on :3000\nno timestamp\n";
            respond.send_response(Response::new(Body::from(text.as_bytes().to_vec())));
        });
        let key = ServiceKey::new("shop", "prod", "api");
        let request = LogRequest { tail: 5, follow: false };
        let lines: Vec<RuntimeLogLine> = target
            .logs(&key, request)
            .await
            .unwrap()
            .map(|l| l.unwrap())
            .collect()
            .await;
        server.await.unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].replica, "api-7d9-x1");
        assert_eq!(lines[0].line, "listening on :3000");
        assert_eq!(lines[0].stream, LogStream::Combined);
        assert!(lines[0].timestamp.is_some());
        assert_eq!((lines[1].timestamp, lines[1].line.as_str()), (None, "no timestamp"));
    }
}
