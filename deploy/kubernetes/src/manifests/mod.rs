//! The Kubernetes objects of a workload: pure functions from a [`Workload`] (and the target's
//! [`KubernetesConfig`](crate::config::KubernetesConfig)) to typed k8s-openapi objects. No I/O,
//! so every object can be snapshotted and schema-checked.
//!
//! Choices worth knowing:
//! - **Resources:** CPU is a request only (no limit, so a replica is never throttled below
//!   what the node has spare); memory is request = limit (a replica never gets more than it
//!   was scheduled with, so the node never overcommits memory).
//! - **Replicas:** with `spec.autoscaling.hpa` the Deployment leaves `replicas` to the HPA
//!   (applying it would reset the HPA's choice on every deploy); otherwise `replicas.min`.
//! - **Secrets** are `Secret` objects (base64 `data`, so a key removed from the store is
//!   removed by the next apply) read with `envFrom`; a hash of their contents is a pod-template
//!   annotation, so a rotated secret rolls the pods (one at a time, without downtime).
//! - **Volumes** are `ReadWriteOnce` PVCs named `<service>-<volume>`: replicas sharing one must
//!   land on the same node. Cron and one-off job pods do not mount them.
//! - **Add-ons** (`addons`) are a StatefulSet, headless Service and seed Secret each, beside
//!   the environment's services; logins change through admin `Job`s, never pod exec.

mod addons;
mod canary;
mod ingress;
mod jobs;
mod namespace;
mod network;
mod workload;

use std::collections::BTreeMap;

use enclii_deploy_contract::{ServiceKey, Track, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::addons::{
    AddonObjects, AddonTask, AdminRun, DEFAULT_ADDON_SIZE, LABEL_ADDON, addon_documents, addon_environment_key,
    addon_host, addon_job_name, addon_labels, addon_name, addon_namespace, addon_objects, addon_pod_name,
    addon_selector, admin_run, admin_work, check_login_name, redis_acl, sha256_hex,
};
pub use self::canary::{canary_objects, promotion};
pub use self::ingress::{IngressInput, canary_ingress, stable_ingress};
pub use self::jobs::job_run;
pub use self::namespace::environment_objects;
pub use self::workload::{service_config_objects, stable_objects};

/// Labels every object carries (see [`labels`]).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PROJECT: &str = "enclii.dev/project";
pub const LABEL_ENVIRONMENT: &str = "enclii.dev/environment";
pub const LABEL_SERVICE: &str = "enclii.dev/service";
pub const LABEL_RELEASE: &str = "enclii.dev/release";
pub const LABEL_TRACK: &str = "enclii.dev/track";
/// Cost attribution: the project pays.
pub const LABEL_COST_CENTER: &str = "enclii.dev/cost-center";
pub const LABEL_GIT_SHA: &str = "enclii.dev/git-sha";
pub const LABEL_JOB: &str = "enclii.dev/job";
pub const MANAGER: &str = "enclii";

pub const ANNOTATION_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
pub const ANNOTATION_CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const ANNOTATION_CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
/// `"false"` on a stable Ingress with a plain-HTTP route (see [`stable_ingress`]).
pub const ANNOTATION_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
const ANNOTATION_SECRETS_HASH: &str = "enclii.dev/secrets-hash";
/// The key of the canary's ConfigMap holding the stable objects `promote` applies.
pub const PROMOTION_KEY: &str = "stable.json";

/// The longest DNS-1123 label (namespace, Service, most object names).
const MAX_NAME: usize = 63;
/// A CronJob's name leaves room for the 11 characters its Jobs append.
const MAX_CRON_JOB_NAME: usize = 52;

/// Default probe timings where the spec leaves them unset.
const PROBE_PERIOD_SECONDS: i32 = 10;
const PROBE_TIMEOUT_SECONDS: i32 = 2;
const PROBE_FAILURE_THRESHOLD: i32 = 3;

/// Per-environment objects: the namespace, its quota and its network policies.
#[derive(Clone, Debug)]
pub struct EnvironmentObjects {
    pub namespace: Namespace,
    pub quota: Option<ResourceQuota>,
    pub network_policies: Vec<NetworkPolicy>,
}

/// The service's configuration objects shared by both tracks: secrets and volumes.
#[derive(Clone, Debug)]
pub struct ServiceConfigObjects {
    pub secrets: Vec<Secret>,
    pub volumes: Vec<PersistentVolumeClaim>,
}

/// The stable track: what serves when no canary runs. Also stored with a canary (see
/// [`CanaryObjects::promotion`]) so that `promote` can apply it without the workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StableObjects {
    pub deployment: Deployment,
    pub service: Option<Service>,
    pub ingress: Option<Ingress>,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub cron_jobs: Vec<CronJob>,
}

/// A canary beside the stable release.
#[derive(Clone, Debug)]
pub struct CanaryObjects {
    pub deployment: Deployment,
    pub service: Option<Service>,
    /// An ingress-nginx canary Ingress on the stable routes, carrying the traffic weight.
    pub ingress: Option<Ingress>,
    /// The release's [`StableObjects`] as JSON, applied by `promote`.
    pub promotion: ConfigMap,
}

/// `enclii-<project>-<environment>`, hash-shortened past 63 characters.
pub fn namespace_name(key: &ServiceKey) -> String {
    dns_name(&format!("enclii-{}-{}", key.project, key.environment), MAX_NAME)
}

/// The stable objects' name: the service's.
pub fn stable_name(key: &ServiceKey) -> String {
    dns_name(&key.service, MAX_NAME)
}

/// The canary objects' name: `<service>-canary`.
pub fn canary_name(key: &ServiceKey) -> String {
    dns_name(&format!("{}-canary", key.service), MAX_NAME)
}

/// The name of a one-off job run: `<service>-<job>-<run>-<attempt>`.
pub fn job_run_name(key: &ServiceKey, job: &str, run: i64, attempt: u32) -> String {
    dns_name(&format!("{}-{job}-{run}-{attempt}", key.service), MAX_NAME)
}

/// Selects every object of the service (both tracks, jobs, secrets, volumes).
pub fn service_selector(key: &ServiceKey) -> String {
    format!("{LABEL_SERVICE}={}", key.service)
}

/// Selects the stable-track objects not written by `release`'s deploy (left over from an
/// earlier spec: a removed cron job, autoscaler or route).
pub fn stale_stable_selector(key: &ServiceKey, release: i64) -> String {
    format!(
        "{LABEL_SERVICE}={},{LABEL_TRACK}=stable,{LABEL_RELEASE}!={release}",
        key.service
    )
}

/// A valid DNS-1123 label of at most `max` characters: lowercased, other characters turned
/// into `-`; a longer name keeps its start and ends with 8 hex digits of its SHA-256, so
/// distinct long names stay distinct.
pub fn dns_name(raw: &str, max: usize) -> String {
    let cleaned: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.len() <= max {
        return cleaned;
    }
    let hash = hex(&Sha256::digest(raw.as_bytes())[..4]);
    let head = cleaned[..max - hash.len() - 1].trim_end_matches('-');
    format!("{head}-{hash}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn track_name(track: Track) -> &'static str {
    match track {
        Track::Stable => "stable",
        Track::Canary => "canary",
    }
}

/// The labels of the environment's own objects (namespace, quota, policies).
pub fn environment_labels(key: &ServiceKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        (LABEL_PROJECT.into(), key.project.clone()),
        (LABEL_ENVIRONMENT.into(), key.environment.clone()),
        (LABEL_COST_CENTER.into(), key.project.clone()),
    ])
}

/// The labels of a service's objects: who owns it, which release and track, who pays.
pub fn labels(workload: &Workload, track: Track) -> BTreeMap<String, String> {
    let key = &workload.key;
    let mut labels = environment_labels(key);
    labels.insert(LABEL_NAME.into(), key.service.clone());
    labels.insert(LABEL_SERVICE.into(), key.service.clone());
    labels.insert(LABEL_RELEASE.into(), workload.release.to_string());
    labels.insert(LABEL_TRACK.into(), track_name(track).into());
    if is_label_value(&workload.git_sha) {
        labels.insert(LABEL_GIT_SHA.into(), workload.git_sha.clone());
    }
    labels
}

/// The labels Enclii sets (see [`labels`]) among an object's labels as read from the cluster:
/// a rewrite of one of the track's objects carries them and no one else's.
pub fn own_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    const OWN: [&str; 9] = [
        LABEL_NAME,
        LABEL_MANAGED_BY,
        LABEL_PROJECT,
        LABEL_ENVIRONMENT,
        LABEL_SERVICE,
        LABEL_RELEASE,
        LABEL_TRACK,
        LABEL_COST_CENTER,
        LABEL_GIT_SHA,
    ];
    labels
        .iter()
        .filter(|(k, _)| OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn is_label_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric())
}

/// What a track's Deployment and Service select: never the release (selectors are immutable).
pub fn selector_labels(key: &ServiceKey, track: Track) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SERVICE.into(), key.service.clone()),
        (LABEL_TRACK.into(), track_name(track).into()),
    ])
}

fn meta(name: String, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        ..Default::default()
    }
}

pub use enclii_deploy_contract::model::format_bytes;

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Every object of a deploy in apply order, as JSON values (for snapshots and validation).
pub fn documents(
    environment: &EnvironmentObjects,
    config_objects: &ServiceConfigObjects,
    stable: Option<&StableObjects>,
    canary: Option<&CanaryObjects>,
) -> Vec<serde_json::Value> {
    fn push<T: Serialize>(docs: &mut Vec<serde_json::Value>, obj: &T) {
        docs.push(serde_json::to_value(obj).expect("k8s objects serialize"));
    }
    let mut docs = Vec::new();
    push(&mut docs, &environment.namespace);
    environment.quota.iter().for_each(|q| push(&mut docs, q));
    environment.network_policies.iter().for_each(|p| push(&mut docs, p));
    config_objects.secrets.iter().for_each(|s| push(&mut docs, s));
    config_objects.volumes.iter().for_each(|v| push(&mut docs, v));
    if let Some(stable) = stable {
        push(&mut docs, &stable.deployment);
        stable.service.iter().for_each(|s| push(&mut docs, s));
        stable.ingress.iter().for_each(|i| push(&mut docs, i));
        stable.autoscaler.iter().for_each(|h| push(&mut docs, h));
        stable.cron_jobs.iter().for_each(|c| push(&mut docs, c));
    }
    if let Some(canary) = canary {
        push(&mut docs, &canary.deployment);
        canary.service.iter().for_each(|s| push(&mut docs, s));
        canary.ingress.iter().for_each(|i| push(&mut docs, i));
        push(&mut docs, &canary.promotion);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_hash_shortened_and_stay_distinct() {
        let a = dns_name(&format!("enclii-{}-prod", "p".repeat(70)), 63);
        let b = dns_name(&format!("enclii-{}-stage", "p".repeat(70)), 63);
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(dns_name("Api_Prod", 63), "api-prod");
    }

    #[test]
    fn bytes_format_as_quantities() {
        assert_eq!(format_bytes(4 << 30), "4Gi");
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
