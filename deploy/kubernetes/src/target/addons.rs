//! Add-ons: apply the environment's namespace and policies, the add-on's Secret, headless
//! Service and StatefulSet (see [`crate::manifests::addon_objects`]), wait until its pod is
//! ready, and change logins with admin `Job`s that connect over the Service as an existing login
//! (the target never execs into a pod).
//!
//! A first provisioning (no previous login) needs no admin run: the seed Secret made the login.
//! A rotation converges the new login as the previous one (falling back to the new one, which a
//! data volume seeded since already has); retiring authenticates as the current login.

use enclii_deploy_contract::model::{AddonKey, AddonWorkload};
use enclii_deploy_contract::{DeployError, Quota};
use enclii_domain::addons::{AddonEndpoint, AddonKind};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{DeleteParams, LogParams};
use tokio::time::Instant;
use tracing::info;

use super::jobs::{JOB_NAME_LABEL, mask};
use super::{KubernetesTarget, Result, api_error, is_bad_request, is_not_found};
use crate::manifests::{self, AddonTask};

/// How many of a pod's last log lines a refusal quotes.
const LOG_TAIL_LINES: i64 = 10;

/// How an admin run's Job ended.
enum JobEnd {
    Succeeded,
    /// The Job's `Failed` condition (reason and message), or its failed pod count.
    Failed(String),
    TimedOut,
}

impl KubernetesTarget {
    pub(super) fn addon_endpoint_of(&self, key: &AddonKey, kind: AddonKind) -> AddonEndpoint {
        AddonEndpoint {
            host: manifests::addon_host(key, &self.config.cluster_domain),
            port: kind.port(),
        }
    }

    pub(super) async fn provision_addon_objects(&self, addon: &AddonWorkload) -> Result<()> {
        for login in addon.previous.iter().chain([&addon.credentials]) {
            manifests::check_login_name(&login.user).map_err(DeployError::Refused)?;
        }
        let key = &addon.key;
        // The add-on may come before any service of the environment: its namespace and network
        // policies first (the quota is the services' deploys' to apply).
        let environment =
            manifests::environment_objects(&manifests::addon_environment_key(key), &Quota::default(), &self.config);
        self.apply_environment_objects(&environment).await?;
        let objects = manifests::addon_objects(addon);
        self.apply_secret(&objects.secret).await?;
        self.apply(&objects.service).await?;
        self.apply(&objects.stateful_set).await?;
        self.wait_addon_ready(addon).await?;
        if addon.previous.is_some() {
            self.run_admin(addon, AddonTask::Login).await?;
        }
        info!(addon = %key, kind = %addon.kind, user = %addon.credentials.user, "add-on ready on kubernetes");
        Ok(())
    }

    pub(super) async fn retire_addon(&self, addon: &AddonWorkload, user: &str) -> Result<()> {
        if user == addon.credentials.user {
            return Ok(());
        }
        manifests::check_login_name(user).map_err(DeployError::Refused)?;
        manifests::check_login_name(&addon.credentials.user).map_err(DeployError::Refused)?;
        self.run_admin(addon, AddonTask::Retire { user }).await?;
        info!(addon = %addon.key, %user, "previous add-on login retired");
        Ok(())
    }

    /// Deletes the StatefulSet, Service, admin Jobs and Secrets; the data claims unless kept
    /// (a pod still using one holds its deletion until the pod is gone).
    pub(super) async fn remove_addon_objects(&self, key: &AddonKey, keep_data: bool) -> Result<()> {
        let ns = manifests::addon_namespace(key);
        let name = manifests::addon_name(key);
        let selector = manifests::addon_selector(key);
        self.delete::<StatefulSet>(&ns, &name).await?;
        self.delete::<Service>(&ns, &name).await?;
        self.delete_matching::<Job>(&ns, &selector).await?;
        // The seed Secret and any admin run's left by an interrupted attempt.
        self.delete_matching::<Secret>(&ns, &selector).await?;
        if !keep_data {
            self.delete_matching::<PersistentVolumeClaim>(&ns, &selector).await?;
        }
        info!(addon = %key, keep_data, "add-on removed from kubernetes");
        Ok(())
    }

    /// Polls the StatefulSet until its pod runs the current template and is ready (its probe:
    /// the server answers on its TCP port), within the rollout timeout.
    async fn wait_addon_ready(&self, addon: &AddonWorkload) -> Result<()> {
        let key = &addon.key;
        let (ns, name) = (manifests::addon_namespace(key), manifests::addon_name(key));
        let deadline = Instant::now() + self.config.rollout_timeout;
        loop {
            let progress = match self.get_opt::<StatefulSet>(&ns, &name).await? {
                Some(set) => stateful_set_progress(&set),
                None => Err(format!("StatefulSet {ns}/{name} disappeared")),
            };
            let why = match progress {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let pod = self.get_opt::<Pod>(&ns, &manifests::addon_pod_name(key)).await?;
                let detail = match pod {
                    Some(pod) => self.describe_pod(&ns, &pod, addon.kind.as_str(), &[]).await?,
                    None => "; no pod was created (see `kubectl describe statefulset`)".into(),
                };
                return Err(DeployError::Refused(format!(
                    "{key} did not become ready within {} s ({why}){detail}",
                    self.config.rollout_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Runs `task` as a Job from the add-on's image and waits for it; a failure is refused with
    /// its pod's state and last log lines (passwords masked).
    async fn run_admin(&self, addon: &AddonWorkload, task: AddonTask<'_>) -> Result<()> {
        let key = &addon.key;
        let ns = manifests::addon_namespace(key);
        let host = manifests::addon_host(key, &self.config.cluster_domain);
        let timeout = self.config.rollout_timeout;
        let deadline_seconds = i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX);
        let run = manifests::admin_run(addon, task, &host, deadline_seconds);
        let name = run.job.name_any();
        // A Job's pod template cannot change and a finished Job does not run again: an earlier
        // attempt's Job goes first, so that every attempt runs the commands.
        self.delete_and_wait_gone::<Job>(&ns, &name).await?;
        self.apply_secret(&run.secret).await?;
        self.apply(&run.job).await?;
        let end = self.wait_job(&ns, &name).await;
        // The passwords are not left in the namespace longer than the run needs them.
        self.delete::<Secret>(&ns, &run.secret.name_any()).await?;
        let what = match task {
            AddonTask::Login => format!("setting login `{}`", addon.credentials.user),
            AddonTask::Retire { user } => format!("retiring login `{user}`"),
        };
        let masks: Vec<String> = addon
            .previous
            .iter()
            .chain([&addon.credentials])
            .map(|c| c.password.clone())
            .filter(|p| !p.is_empty())
            .collect();
        let (why, timed_out) = match end? {
            JobEnd::Succeeded => return Ok(()),
            JobEnd::Failed(why) => (why, false),
            JobEnd::TimedOut => (format!("it did not finish within {} s", timeout.as_secs()), true),
        };
        let detail = self.job_pods_detail(&ns, &name, &masks).await?;
        // A failed Job stays for `kubectl` until its TTL; one still running is stopped.
        if timed_out {
            self.delete::<Job>(&ns, &name).await?;
        }
        Err(DeployError::Refused(format!(
            "{key}: {what} failed (Job {ns}/{name}: {why}){detail}"
        )))
    }

    /// Deletes the object and waits until the API no longer has it.
    async fn delete_and_wait_gone<K>(&self, ns: &str, name: &str) -> Result<()>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        match self.api::<K>(ns).delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(api_error(&format!("deleting {} {ns}/{name}", K::kind(&())), e)),
        }
        let deadline = Instant::now() + self.config.rollout_timeout;
        while self.get_opt::<K>(ns, name).await?.is_some() {
            if Instant::now() >= deadline {
                return Err(DeployError::kubernetes_message(format!(
                    "{} {ns}/{name} is still being deleted",
                    K::kind(&())
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
        Ok(())
    }

    async fn wait_job(&self, ns: &str, name: &str) -> Result<JobEnd> {
        let deadline = Instant::now() + self.config.rollout_timeout;
        loop {
            let job = self.get_opt::<Job>(ns, name).await?;
            let Some(job) = job else {
                return Ok(JobEnd::Failed("the Job disappeared".into()));
            };
            if let Some(end) = job_end(&job) {
                return Ok(end);
            }
            if Instant::now() >= deadline {
                return Ok(JobEnd::TimedOut);
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The state and last log lines of the Job's pods.
    async fn job_pods_detail(&self, ns: &str, job: &str, masks: &[String]) -> Result<String> {
        let pods = self.list::<Pod>(ns, &format!("{JOB_NAME_LABEL}={job}")).await?;
        if pods.is_empty() {
            return Ok("; no pod was started".into());
        }
        let mut detail = String::new();
        for pod in &pods {
            detail.push_str(&self.describe_pod(ns, pod, "admin", masks).await?);
        }
        Ok(detail)
    }

    /// `; pod <name>: <state>; last log lines: …` (log lines with `masks` hidden).
    async fn describe_pod(&self, ns: &str, pod: &Pod, container: &str, masks: &[String]) -> Result<String> {
        let name = pod.name_any();
        let params = LogParams {
            container: Some(container.into()),
            tail_lines: Some(LOG_TAIL_LINES),
            ..Default::default()
        };
        let log = match self.api::<Pod>(ns).logs(&name, &params).await {
            Ok(log) => log,
            // Not started (or gone): no log to show.
            Err(e) if is_bad_request(&e) || is_not_found(&e) => String::new(),
            Err(e) => return Err(api_error(&format!("reading the log of Pod {ns}/{name}"), e)),
        };
        let lines: Vec<String> = log
            .lines()
            .map(|l| mask(l.trim_end().to_string(), masks))
            .filter(|l| !l.is_empty())
            .collect();
        let mut detail = format!("; pod {name}: {}", pod_state(pod));
        if !lines.is_empty() {
            detail.push_str(&format!("; last log lines: {}", lines.join(" | ")));
        }
        Ok(detail)
    }
}

/// `Ok` once the controller has seen the latest spec and every replica is updated and ready (as
/// `kubectl rollout status` decides for a StatefulSet's rolling update); otherwise why not.
fn stateful_set_progress(set: &StatefulSet) -> Result<(), String> {
    let generation = set.metadata.generation.unwrap_or(0);
    let desired = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = set.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    let (ready, updated) = (status.ready_replicas.unwrap_or(0), status.updated_replicas.unwrap_or(0));
    if observed == 0 || observed < generation {
        return Err(format!(
            "the StatefulSet controller has not observed generation {generation} yet"
        ));
    }
    if ready < desired || updated < desired {
        return Err(format!("{ready} of {desired} pods ready, {updated} updated"));
    }
    Ok(())
}

/// A finished Job's end: its `Complete` / `Failed` condition, else its pod counts (backoff limit
/// 0: one failed pod fails it). `None` while it runs.
fn job_end(job: &Job) -> Option<JobEnd> {
    let status = job.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let holds = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    if holds("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return Some(JobEnd::Succeeded);
    }
    if let Some(failed) = holds("Failed") {
        let reason = failed.reason.clone().unwrap_or_else(|| "Failed".into());
        return Some(JobEnd::Failed(match &failed.message {
            Some(message) => format!("{reason}: {message}"),
            None => reason,
        }));
    }
    let failed = status.failed.unwrap_or(0);
    (failed > 0).then(|| JobEnd::Failed(format!("{failed} pod failed")))
}

/// A pod's state in a few words: why it waits, how its container ended, or its phase.
fn pod_state(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(condition) = unscheduled {
        let message = condition.message.clone().unwrap_or_default();
        return format!("{phase}, not scheduled: {message}");
    }
    for container in status.container_statuses.iter().flatten() {
        let Some(state) = &container.state else { continue };
        if let Some(waiting) = &state.waiting {
            let reason = waiting.reason.clone().unwrap_or_default();
            let message = waiting.message.clone().map(|m| format!(": {m}")).unwrap_or_default();
            return format!("{phase}, container {} waiting ({reason}{message})", container.name);
        }
        if let Some(done) = &state.terminated {
            let reason = done.reason.clone().unwrap_or_default();
            return format!(
                "{phase}, container {} exited {} ({reason})",
                container.name, done.exit_code
            );
        }
        if !container.ready {
            return format!("{phase}, container {} running but not ready", container.name);
        }
    }
    phase
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status})).unwrap()
    }

    #[test]
    fn job_ends_are_read_from_conditions_and_counts() {
        assert!(job_end(&job(serde_json::json!({"active": 1}))).is_none());
        assert!(matches!(
            job_end(&job(serde_json::json!({"succeeded": 1}))),
            Some(JobEnd::Succeeded)
        ));
        let failed = job(
            serde_json::json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        match job_end(&failed) {
            Some(JobEnd::Failed(why)) => {
                assert_eq!(why, "BackoffLimitExceeded: Job has reached the specified backoff limit")
            }
            _ => panic!("failed"),
        }
    }

    #[test]
    fn a_statefulset_is_ready_once_its_pod_is_updated_and_ready() {
        let set = |status: serde_json::Value| -> StatefulSet {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s", "generation": 2},
                "spec": {"replicas": 1, "selector": {}, "template": {}}, "status": status}))
            .unwrap()
        };
        let stale = set(serde_json::json!({"replicas": 1, "observedGeneration": 1, "readyReplicas": 1}));
        assert!(stateful_set_progress(&stale).unwrap_err().contains("generation 2"));
        let starting = set(serde_json::json!({"replicas": 1, "observedGeneration": 2, "updatedReplicas": 1}));
        assert_eq!(
            stateful_set_progress(&starting).unwrap_err(),
            "0 of 1 pods ready, 1 updated"
        );
        let ready = set(
            serde_json::json!({"replicas": 1, "observedGeneration": 2, "readyReplicas": 1,
            "updatedReplicas": 1}),
        );
        assert!(stateful_set_progress(&ready).is_ok());
    }
}
