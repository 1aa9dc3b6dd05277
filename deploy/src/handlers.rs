//! The queue handlers that drive a [`Target`]: `deploy`, `canary-analyze` and
//! `preview-teardown`. They read and record state in the control plane (the store) and know the
//! target only through the trait.
//!
//! A deployment moves `pending → running → (canary →)* succeeded | failed | rolled_back`; a newer
//! deployment of the same service and environment supersedes an unfinished one. Every effect is
//! idempotent so that a retried job (the queue runs at least once) reaches the same end state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use enclii_deploy_contract::analysis::{Verdict, judge};
use enclii_deploy_contract::error::DeployError;
use enclii_deploy_contract::model::{
    Quota, Rollout, RouteBinding, SecretEnv, SecretValue, ServiceKey, Track, Workload,
};
use enclii_deploy_contract::target::{Removal, Target};
use enclii_domain::jobs;
use enclii_domain::secrets::is_platform_secret;
use enclii_domain::spec::{DeployStrategy, ServiceSpec};
use enclii_queue::NewJob;
use enclii_store::{
    AddonStatus, DeployPlan, Deployment, DeploymentStatus, DeploymentUpdate, JobLog, SignaturePolicy, Store,
    StoreError, Supersession,
};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use tracing::{info, warn};

/// Who the deployer is in the audit trail.
const ACTOR: &str = "system:deployer";

/// How long a deploy waits for the add-ons it reads to finish provisioning.
const ADDON_WAIT: Duration = Duration::from_secs(180);

#[derive(Clone, Debug)]
pub struct DeployerConfig {
    /// Previews answer on `<service>-<environment>.<preview_domain>`.
    pub preview_domain: String,
    /// Every other deployment answers on `<service>.<project>.<base_domain>` in the service's home
    /// environment and `<service>-<environment>.<project>.<base_domain>` elsewhere.
    pub base_domain: Option<String>,
    /// After an add-on's rotation, how long the previous login keeps working while services
    /// roll to the new one.
    pub addon_retire_after: std::time::Duration,
    /// Where add-on backups are kept; `None` refuses backups and restores with that reason.
    pub artefacts: Option<enclii_artefacts::ArtefactConfig>,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        Self {
            preview_domain: "preview.localhost".into(),
            base_domain: None,
            addon_retire_after: std::time::Duration::from_secs(600),
            artefacts: None,
        }
    }
}

/// Drives one target for the queue.
pub struct Deployer {
    store: Arc<Store>,
    target: Arc<dyn Target>,
    signatures: Option<Arc<dyn SignaturePolicy>>,
    config: DeployerConfig,
}

/// Registers the handlers that need a target: `deploy`, `canary-analyze`, `preview-teardown`,
/// `teardown`, `route-sync`, `job-run` and `cost-sample`.
pub fn register(registry: &mut Registry, deployer: Arc<Deployer>, prices: enclii_store::Prices) {
    registry
        .register_typed::<jobs::Deploy, _>(Handle(deployer.clone()))
        .register_typed::<jobs::CanaryAnalyze, _>(Handle(deployer.clone()))
        .register_typed::<jobs::PreviewTeardown, _>(Handle(deployer.clone()))
        .register_typed::<jobs::Teardown, _>(Handle(deployer.clone()));
    crate::routes::register(registry, deployer.clone());
    crate::addons::register(
        registry,
        deployer.store.clone(),
        deployer.target.clone(),
        deployer.config.addon_retire_after,
        deployer.config.artefacts.clone(),
    );
    crate::addon_backups::register(
        registry,
        deployer.store.clone(),
        deployer.target.clone(),
        deployer.config.artefacts.clone(),
    );
    crate::timetable::register(registry, deployer, prices);
}

struct Handle(Arc<Deployer>);

/// The store's routes as the target binds them.
pub(crate) fn route_bindings(routes: Vec<enclii_store::Route>) -> Vec<RouteBinding> {
    routes
        .into_iter()
        .map(|r| RouteBinding {
            host: r.host,
            path: r.path,
            tls: r.tls,
        })
        .collect()
}

/// A failure of one attempt: permanent failures end the deployment now, others when the last
/// attempt fails.
pub(crate) fn job_error(e: DeployError) -> JobError {
    if e.is_permanent() {
        JobError::Abort(e.to_string())
    } else {
        JobError::Retry(e.to_string())
    }
}

/// How one attempt of a deploy-side job failed: the [`JobError`] the queue gets. Store errors
/// become one with `?` through the single conversion below (`From<StoreError> for JobError`
/// cannot live in this crate: both types are foreign to it).
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) JobError);

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        Failure(e)
    }
}

/// What the store refused (a missing, conflicting or invalid record) ends the job; anything else
/// (the database, sealing) is worth a retry.
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(match e {
            StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_) => {
                JobError::Abort(e.to_string())
            }
            other => JobError::Retry(other.to_string()),
        })
    }
}

impl From<Failure> for JobError {
    fn from(failure: Failure) -> Self {
        failure.0
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Deployer {
    pub fn new(
        store: Arc<Store>,
        target: Arc<dyn Target>,
        signatures: Option<Arc<dyn SignaturePolicy>>,
        config: DeployerConfig,
    ) -> Self {
        Self {
            store,
            target,
            signatures,
            config,
        }
    }

    pub fn target(&self) -> &Arc<dyn Target> {
        &self.target
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The service's spec as applied now.
    pub(crate) async fn spec(&self, project: &str, service: &str) -> Result<ServiceSpec, Failure> {
        let service = self.store.service(project, service).await?;
        serde_json::from_str(&service.spec).map_err(|e| {
            Failure(JobError::Abort(format!(
                "the stored spec of {project}/{} does not parse: {e}",
                service.name
            )))
        })
    }

    /// The preview host of a service in a `preview-<n>` environment.
    pub fn preview_host(&self, environment: &str, service: &str) -> Option<String> {
        environment
            .starts_with("preview-")
            .then(|| format!("{service}-{environment}.{}", self.config.preview_domain))
    }

    /// The host the platform generates for the service in `key`'s environment, needing no proof
    /// of ownership: the preview host in a preview, else one under the base domain (if set).
    pub fn generated_host(&self, key: &ServiceKey, home_environment: &str) -> Option<String> {
        if let Some(host) = self.preview_host(&key.environment, &key.service) {
            return Some(host);
        }
        let base = self.config.base_domain.as_deref()?;
        Some(if key.environment == home_environment {
            format!("{}.{}.{base}", key.service, key.project)
        } else {
            format!("{}-{}.{}.{base}", key.service, key.environment, key.project)
        })
    }

    /// Everything the target needs for the plan's release of the service in its environment.
    pub(crate) async fn workload(
        &self,
        deployment: &Deployment,
        plan: &DeployPlan,
        spec: ServiceSpec,
    ) -> Result<Workload, Failure> {
        let (release, environment) = (&plan.release, &plan.environment);
        let key = ServiceKey::new(&release.project, &environment.name, &release.service);
        let digest = release
            .digest
            .as_deref()
            .ok_or_else(|| JobError::Abort(format!("release {} has no image digest; rebuild it", release.id)))?;
        let mut routes = plan.routes.clone();
        if let Some(host) = self.generated_host(&key, &spec.metadata.environment) {
            let bound = self.store.bind_generated_route(&key, &host).await?;
            // The plan was read before the binding; a route bound just now is the newest (routes
            // are in id order).
            if !routes.iter().any(|r| r.id == bound.id) {
                routes.push(bound);
            }
        }
        let routes = route_bindings(routes);
        let mut secrets = secrets(&key, &spec, plan)?;
        secrets.extend(crate::addons::addon_env(&*self.target, &key, &spec.spec, &plan.addons)?);
        let mut spec = spec;
        // Their values are in the secrets now (a plain `env` entry would win over them on Kubernetes).
        spec.spec.env.retain(|var| var.from_addon.is_none());
        let mib = |v: Option<i64>| v.map(|m| m.max(0) as u64 * 1024 * 1024);
        Ok(Workload {
            release: release.id,
            deployment: deployment.id,
            image: enclii_domain::image::pinned(&release.image, digest),
            git_sha: release.git_sha.clone(),
            spec: spec.spec,
            secrets,
            routes,
            quota: Quota {
                cpu_millis: environment.quota_cpu_millis.map(|m| m.max(0) as u64),
                memory_bytes: mib(environment.quota_memory_mib),
                storage_bytes: mib(environment.quota_storage_mib),
                pods: environment.quota_pods.map(|p| p.clamp(0, i64::from(u32::MAX)) as u32),
            },
            key,
        })
    }

    async fn update(
        &self,
        deployment: &Deployment,
        update: DeploymentUpdate,
        then: Option<NewJob>,
    ) -> Result<Deployment, Failure> {
        Ok(self
            .store
            .update_deployment(ACTOR, deployment.id, &update, then)
            .await?)
    }

    /// Ends the deployment as failed with `why` and hands the failure to the queue.
    async fn fail(&self, deployment: &Deployment, why: String, error: impl Into<Failure>) -> Failure {
        let update = DeploymentUpdate {
            status: DeploymentStatus::Failed,
            detail: Some(why),
            ..DeploymentUpdate::default()
        };
        if let Err(e) = self.update(deployment, update, None).await {
            warn!(deployment = deployment.id, error = %e, "could not record the failed deployment");
        }
        error.into()
    }

    async fn deploy(&self, job: jobs::Deploy, ctx: &JobContext) -> Result<(), Failure> {
        let project = ctx.job.project.clone();
        let spec = self.spec(&project, &job.service).await?;
        let strategy = match spec.spec.deploy.strategy {
            DeployStrategy::Canary => "canary",
            DeployStrategy::Rolling => "rolling",
        };
        let deployment = match job.deployment {
            // Created through the API: the row may commit just after the job (separate queue).
            Some(id) => {
                self.store
                    .read_enqueued_with(ctx.job.created_at, || self.store.deployment(id))
                    .await
            }
            None => {
                self.store
                    .pipeline_deployment(ctx.job.id, &project, &job, strategy)
                    .await
            }
        }?;
        if deployment.status.is_terminal() {
            info!(deployment = deployment.id, status = %deployment.status, "deployment already ended");
            return Ok(());
        }
        let writer = JobLog::open(self.store.clone(), ctx.job.id, Vec::new()).await?;
        let log = writer.log().clone();
        let mut result = self.run_deployment(&deployment, spec, &log, ctx).await;
        if let Err(e) = &result {
            log.line(format!("deploy failed: {e}"));
        }
        // A service or environment deleted while this deploy ran had its teardown run already:
        // what the deploy started after it must not outlive it (volumes are the teardown's call).
        let deleted = match (
            self.store.service(&project, &job.service).await,
            self.store.environment(&project, &deployment.environment).await,
        ) {
            (Err(StoreError::NotFound(_)), _) => Some("service"),
            (_, Err(StoreError::NotFound(_))) => Some("environment"),
            _ => None,
        };
        if let Some(what) = deleted {
            let key = ServiceKey::new(&project, &deployment.environment, &job.service);
            self.target
                .remove(&key, Removal::Service { keep_volumes: true })
                .await
                .map_err(job_error)?;
            log.line(format!(
                "the {what} was deleted during the deploy; what it started was removed"
            ));
            result = Err(Failure(JobError::Abort(format!(
                "{key} was deleted during its deploy (its {what})"
            ))));
        }
        writer.finish().await;
        result
    }

    async fn run_deployment(
        &self,
        deployment: &Deployment,
        spec: ServiceSpec,
        log: &JobLog,
        ctx: &JobContext,
    ) -> Result<(), Failure> {
        match self.store.supersede_deployments(deployment).await? {
            Supersession::SupersededBy(newer) => {
                log.line(format!("deployment {newer} is newer: this one ended as superseded"));
                return Ok(());
            }
            Supersession::Supersedes(older) if !older.is_empty() => {
                log.line(format!("superseding deployments {older:?}"));
            }
            Supersession::Supersedes(_) => {}
        }
        let deployment = if deployment.status == DeploymentStatus::Pending {
            let running = DeploymentUpdate {
                status: DeploymentStatus::Running,
                ..DeploymentUpdate::default()
            };
            self.update(deployment, running, None).await?
        } else {
            deployment.clone()
        };
        let home = &spec.metadata.environment;
        if deployment.environment.starts_with("preview-") && deployment.environment != *home {
            let created = self
                .store
                .ensure_preview_addons(
                    ACTOR,
                    &enclii_store::PreviewAddons {
                        project: &deployment.project,
                        preview: &deployment.environment,
                        home,
                        names: &spec.spec.addons(),
                        seed: spec.spec.previews.seed_addons,
                    },
                )
                .await?;
            if !created.is_empty() {
                log.line(format!(
                    "the preview's own add-ons, like {home}'s: {created:?} (provisioning)"
                ));
            }
        }
        let plan = self.plan_with_addons(&deployment, &spec, log).await?;
        let release = &plan.release;
        log.line(format!(
            "== deploy release {} ({}) of {}/{} to {} on {} · {} · attempt {}/{}",
            release.id,
            release.git_sha,
            release.project,
            release.service,
            deployment.environment,
            self.target.name(),
            deployment.strategy,
            ctx.job.attempt,
            ctx.job.policy.max_attempts
        ));
        if let Some(policy) = &self.signatures
            && let Err(why) = policy.check(release).await
        {
            let why = format!("release {} cannot deploy: {why}", release.id);
            return Err(self.fail(&deployment, why.clone(), JobError::Abort(why)).await);
        }
        let steps = spec.spec.deploy.steps.clone();
        let analysis = spec.spec.deploy.analysis.clone();
        let workload = match self.workload(&deployment, &plan, spec).await {
            Ok(w) => w,
            // Something it reads is on its way (an add-on provisioning): the attempt is retried.
            Err(Failure(JobError::Retry(why))) if !ctx.is_last_attempt() => {
                log.line(format!("waiting: {why}"));
                return Err(Failure(JobError::Retry(why)));
            }
            Err(e) => return Err(self.fail(&deployment, e.to_string(), e).await),
        };
        let rollout = match (deployment.strategy.as_str(), steps.first()) {
            ("canary", Some(&first)) if first < 100 => Rollout::Canary { percent: first as u8 },
            _ => Rollout::Replace,
        };
        log.line(format!(
            "starting {} replica(s) of {} with {} route(s)",
            workload.spec.runtime.replicas.min.max(1),
            workload.image,
            workload.routes.len()
        ));
        let outcome = match self.target.deploy(&workload, rollout).await {
            Ok(outcome) => outcome,
            Err(DeployError::Superseded { applied, .. }) => {
                let why = format!("superseded by deployment {applied}, which the target applied first");
                log.line(&why);
                let update = DeploymentUpdate {
                    status: DeploymentStatus::Superseded,
                    detail: Some(why),
                    ..DeploymentUpdate::default()
                };
                // Ended already (superseded by that deployment's start) is as good.
                if let Err(e) = self.update(&deployment, update, None).await {
                    info!(deployment = deployment.id, error = %e, "superseded deployment already ended");
                }
                return Ok(());
            }
            Err(e) => {
                let permanent = e.is_permanent();
                let why = e.to_string();
                let error = job_error(e);
                return Err(if permanent || ctx.is_last_attempt() {
                    self.fail(&deployment, why, error).await
                } else {
                    error.into()
                });
            }
        };
        match (outcome.track, rollout) {
            (Track::Canary, Rollout::Canary { percent }) => {
                let window = analysis.window_duration().unwrap_or(Duration::from_secs(120));
                let detail = format!(
                    "canary step 1/{}: {percent}% of traffic, judged after {} s",
                    steps.len(),
                    window.as_secs()
                );
                log.line(&detail);
                let next = analyze_job(&deployment, 0, window)?;
                let update = DeploymentUpdate {
                    status: DeploymentStatus::Canary,
                    detail: Some(detail),
                    canary_percent: Some(i32::from(percent)),
                    url: outcome.url,
                };
                self.record_end(&deployment, update, Some(next)).await?;
            }
            _ => {
                let detail = format!("serving all traffic with {} replica(s)", outcome.replicas);
                log.line(&detail);
                if let Some(url) = &outcome.url {
                    log.line(format!("url: {url}"));
                }
                let update = DeploymentUpdate {
                    status: DeploymentStatus::Succeeded,
                    detail: Some(detail),
                    canary_percent: None,
                    url: outcome.url,
                };
                self.record_end(&deployment, update, None).await?;
            }
        }
        Ok(())
    }

    /// Records what the deploy did. A deployment that a newer one superseded meanwhile stays
    /// superseded (the newer one's deploy follows it on the target, or was applied first and
    /// refused it): the job has nothing left to do, it is not a failure.
    async fn record_end(
        &self,
        deployment: &Deployment,
        update: DeploymentUpdate,
        then: Option<NewJob>,
    ) -> Result<(), Failure> {
        match self.store.update_deployment(ACTOR, deployment.id, &update, then).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(why)) => {
                info!(deployment = deployment.id, %why, "deployment ended meanwhile; nothing recorded");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn analyze(&self, job: jobs::CanaryAnalyze, ctx: &JobContext) -> Result<(), Failure> {
        let deployment = self.store.deployment(job.deployment).await?;
        if deployment.status != DeploymentStatus::Canary {
            info!(deployment = deployment.id, status = %deployment.status, "canary no longer under analysis");
            return Ok(());
        }
        let result = self.judge_step(&deployment, job.step, ctx).await;
        match result {
            Err(e) if ctx.is_last_attempt() || matches!(e.0, JobError::Abort(_)) => {
                // A canary nobody can judge must not keep its share of the traffic.
                let key = ServiceKey::new(&deployment.project, &deployment.environment, &deployment.service);
                if let Err(abort) = self.target.abort_canary(&key, deployment.release_id).await {
                    warn!(deployment = deployment.id, error = %abort, "could not remove the unjudged canary");
                }
                let why = format!("canary analysis could not complete, canary removed: {e}");
                Err(self.fail(&deployment, why, e).await)
            }
            other => other,
        }
    }

    async fn judge_step(&self, deployment: &Deployment, step: u32, ctx: &JobContext) -> Result<(), Failure> {
        let job = jobs::CanaryAnalyze {
            deployment: deployment.id,
            step,
        };
        let spec = self.spec(&deployment.project, &deployment.service).await?;
        let (steps, analysis) = (&spec.spec.deploy.steps, &spec.spec.deploy.analysis);
        let window = analysis.window_duration().unwrap_or(Duration::from_secs(120));
        let key = ServiceKey::new(&deployment.project, &deployment.environment, &deployment.service);
        let release = deployment.release_id;
        let metrics = self
            .target
            .release_metrics(&key, release, window)
            .await
            .map_err(job_error)?;
        let step = job.step as usize;
        let writer = JobLog::open(self.store.clone(), ctx.job.id, Vec::new()).await?;
        let log = writer.log().clone();
        let result = match judge(&metrics, window, analysis.max_error_rate, analysis.max_p95()) {
            Verdict::Fail(why) => {
                log.line(format!("canary step {}: {why}; rolling back", step + 1));
                self.target.abort_canary(&key, release).await.map_err(job_error)?;
                let update = DeploymentUpdate {
                    status: DeploymentStatus::RolledBack,
                    detail: Some(format!("automatic rollback at canary step {}: {why}", step + 1)),
                    canary_percent: None,
                    url: None,
                };
                self.update(deployment, update, None).await.map(drop)
            }
            Verdict::Pass(seen) => match steps.get(step + 1) {
                Some(&percent) if percent < 100 => {
                    log.line(format!(
                        "canary step {} passed ({seen}); moving to {percent}%",
                        step + 1
                    ));
                    self.target
                        .shift(&key, release, percent as u8)
                        .await
                        .map_err(job_error)?;
                    let update = DeploymentUpdate {
                        status: DeploymentStatus::Canary,
                        detail: Some(format!(
                            "canary step {}/{}: {percent}% of traffic",
                            step + 2,
                            steps.len()
                        )),
                        canary_percent: Some(percent as i32),
                        url: None,
                    };
                    let next = analyze_job(deployment, job.step + 1, window)?;
                    self.update(deployment, update, Some(next)).await.map(drop)
                }
                _ => {
                    log.line(format!("canary step {} passed ({seen}); promoting", step + 1));
                    self.target.promote(&key, release).await.map_err(job_error)?;
                    let update = DeploymentUpdate {
                        status: DeploymentStatus::Succeeded,
                        detail: Some(format!("promoted after {} canary step(s): {seen}", step + 1)),
                        canary_percent: None,
                        url: None,
                    };
                    self.update(deployment, update, None).await.map(drop)
                }
            },
        };
        writer.finish().await;
        result
    }

    async fn teardown(&self, job: jobs::PreviewTeardown, ctx: &JobContext) -> Result<(), Failure> {
        if !job.environment.starts_with("preview-") {
            return Err(Failure(JobError::Abort(format!(
                "`{}` is not a preview environment; only preview-<n> environments are torn down",
                job.environment
            ))));
        }
        let key = ServiceKey::new(&ctx.job.project, &job.environment, &job.service);
        let removal = Removal::Environment { keep_volumes: false };
        self.target.remove(&key, removal).await.map_err(job_error)?;
        self.store.forget_preview(ACTOR, &key).await?;
        info!(service = %key, pull_request = job.pull_request, "preview torn down");
        Ok(())
    }
}

impl Deployer {
    /// The deploy plan, once every add-on the spec reads in the deployment's environment has
    /// finished provisioning (a new one, or a preview's own, takes seconds): waited for here, up
    /// to [`ADDON_WAIT`], rather than spending the job's attempts.
    async fn plan_with_addons(
        &self,
        deployment: &Deployment,
        spec: &ServiceSpec,
        log: &JobLog,
    ) -> Result<DeployPlan, Failure> {
        let reads = spec.spec.addons();
        let deadline = tokio::time::Instant::now() + ADDON_WAIT;
        let mut said = false;
        loop {
            let plan = self.store.deploy_plan(deployment).await?;
            let provisioning: Vec<&str> = plan
                .addons
                .iter()
                .filter(|a| reads.contains(&a.addon.name.as_str()) && a.addon.status == AddonStatus::Provisioning)
                .map(|a| a.addon.name.as_str())
                .collect();
            if provisioning.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(plan);
            }
            if !said {
                log.line(format!("waiting for add-on(s) {provisioning:?} to be ready"));
                said = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Removes a deleted service from the target (its rows went with the deletion).
    async fn remove_deleted(&self, job: jobs::Teardown, ctx: &JobContext) -> Result<(), Failure> {
        let key = ServiceKey::new(&ctx.job.project, &job.environment, &job.service);
        let removal = match job.whole_environment {
            true => Removal::Environment {
                keep_volumes: job.keep_volumes,
            },
            false => Removal::Service {
                keep_volumes: job.keep_volumes,
            },
        };
        self.target.remove(&key, removal).await.map_err(job_error)?;
        info!(service = %key, ?removal, "deleted service removed from the target");
        Ok(())
    }
}

/// The analysis of canary step `step`, due when its window has passed; one per step.
fn analyze_job(deployment: &Deployment, step: u32, window: Duration) -> Result<NewJob, JobError> {
    let run_at = chrono::Utc::now() + chrono::Duration::from_std(window).unwrap_or(chrono::Duration::minutes(2));
    let job = jobs::CanaryAnalyze {
        deployment: deployment.id,
        step,
    };
    Ok(NewJob::typed(&deployment.project, &job)
        .map_err(|e| JobError::Abort(e.to_string()))?
        .run_at(run_at)
        .unique_key(job.unique_key()))
}

/// The secrets the service reads: each `envFrom` secret (a Lockbox secret holding `KEY=value`
/// lines) and the service-scoped secrets as variables of their own name. Project- and
/// environment-wide secrets reach a service only through `envFrom`; platform secrets
/// (`GIT_TOKEN`, build secrets) never do.
fn secrets(key: &ServiceKey, spec: &ServiceSpec, plan: &DeployPlan) -> Result<Vec<SecretEnv>, JobError> {
    let all = &plan.secrets;
    let value = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut out = Vec::new();
    let imported: Vec<&String> = spec
        .spec
        .env_from
        .iter()
        .filter_map(|f| f.secret_ref.as_ref())
        .collect();
    for (index, from) in spec.spec.env_from.iter().enumerate() {
        let Some(secret_ref) = &from.secret_ref else { continue };
        if is_platform_secret(secret_ref) || spec.spec.build.secrets.contains(secret_ref) {
            return Err(JobError::Abort(format!(
                "spec.envFrom[{index}].secretRef: `{secret_ref}` is a platform or build secret and is never given \
                 to a running service; store what the service needs under another name"
            )));
        }
        let (_, bytes) = all.iter().find(|(name, _)| name == secret_ref).ok_or_else(|| {
            JobError::Abort(format!(
                "spec.envFrom[{index}].secretRef: secret `{secret_ref}` does not exist for {key}; set it with \
                 `enclii secrets set {secret_ref}=… --service {} --env {}`",
                key.service, key.environment
            ))
        })?;
        out.push(SecretEnv {
            name: secret_ref.clone(),
            entries: dotenv(&value(bytes)),
        });
    }
    let scoped = &plan.service_scoped;
    let own: Vec<(String, SecretValue)> = all
        .iter()
        .filter(|(name, _)| scoped.iter().any(|m| m.name == *name))
        .filter(|(name, _)| !is_platform_secret(name) && !spec.spec.build.secrets.contains(name))
        .filter(|(name, _)| !imported.contains(&name))
        .filter(|(name, _)| enclii_domain::spec::validate_env_name(name).is_ok())
        .map(|(name, bytes)| (name.clone(), SecretValue::new(value(bytes))))
        .collect();
    if !own.is_empty() {
        out.push(SecretEnv {
            name: format!("{}-env", key.service),
            entries: own,
        });
    }
    Ok(out)
}

/// `KEY=value` lines, parsed by [`enclii_domain::dotenv::parse`] (fuzzed there).
fn dotenv(text: &str) -> Vec<(String, SecretValue)> {
    enclii_domain::dotenv::parse(text)
        .into_iter()
        .map(|(k, v)| (k, SecretValue::new(v)))
        .collect()
}

#[async_trait]
impl TypedHandler<jobs::Deploy> for Handle {
    async fn handle(&self, job: jobs::Deploy, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.0.deploy(job, ctx).await?)
    }
}

#[async_trait]
impl TypedHandler<jobs::CanaryAnalyze> for Handle {
    async fn handle(&self, job: jobs::CanaryAnalyze, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.0.analyze(job, ctx).await?)
    }
}

#[async_trait]
impl TypedHandler<jobs::PreviewTeardown> for Handle {
    async fn handle(&self, job: jobs::PreviewTeardown, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.0.teardown(job, ctx).await?)
    }
}

#[async_trait]
impl TypedHandler<jobs::Teardown> for Handle {
    async fn handle(&self, job: jobs::Teardown, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.0.remove_deleted(job, ctx).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_become_entries() {
        let entries = dotenv("# db\nexport DATABASE_URL=\"postgres://x\"\n\nTOKEN='a=b'\nnot a pair\n");
        let names: Vec<_> = entries.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(names, [("DATABASE_URL", "postgres://x"), ("TOKEN", "a=b")]);
    }
}
