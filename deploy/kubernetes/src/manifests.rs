//! The Kubernetes objects of a workload: pure functions from a [`Workload`] (and the target's
//! [`KubernetesConfig`]) to typed k8s-openapi objects. No I/O, so every object can be
//! snapshotted and schema-checked.
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

use std::collections::BTreeMap;

use enclii_deploy_contract::{Quota, RouteBinding, ServiceKey, Track, Workload};
use enclii_domain::spec::Probe as SpecProbe;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceQuota,
    ResourceQuotaSpec, ResourceRequirements, Secret, SecretEnvSource, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::KubernetesConfig;

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

/// The namespace, its `ResourceQuota` (when any limit is set) and its network policies:
/// default deny, then ingress from the ingress controller and the namespace itself, egress to
/// DNS, the namespace and addresses outside the cluster.
pub fn environment_objects(key: &ServiceKey, quota: &Quota, config: &KubernetesConfig) -> EnvironmentObjects {
    let ns = namespace_name(key);
    let labels = environment_labels(key);
    EnvironmentObjects {
        namespace: Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
        quota: resource_quota(&ns, &labels, quota),
        network_policies: network_policies(&ns, &labels, config),
    }
}

fn resource_quota(ns: &str, labels: &BTreeMap<String, String>, quota: &Quota) -> Option<ResourceQuota> {
    let mut hard = BTreeMap::new();
    if let Some(cpu) = quota.cpu_millis {
        hard.insert("requests.cpu".to_string(), Quantity(format!("{cpu}m")));
    }
    if let Some(memory) = quota.memory_bytes {
        hard.insert("requests.memory".to_string(), Quantity(format_bytes(memory)));
        hard.insert("limits.memory".to_string(), Quantity(format_bytes(memory)));
    }
    if let Some(storage) = quota.storage_bytes {
        hard.insert("requests.storage".to_string(), Quantity(format_bytes(storage)));
    }
    if let Some(pods) = quota.pods {
        hard.insert("pods".to_string(), Quantity(pods.to_string()));
    }
    (!hard.is_empty()).then(|| ResourceQuota {
        metadata: meta("enclii-quota".into(), ns, labels.clone()),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn network_policies(ns: &str, labels: &BTreeMap<String, String>, config: &KubernetesConfig) -> Vec<NetworkPolicy> {
    let all_pods = LabelSelector::default();
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    let namespace_named = |name: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            name.to_string(),
        )])),
        ..Default::default()
    };
    let policy = |name: &str, spec: NetworkPolicySpec| NetworkPolicy {
        metadata: meta(name.into(), ns, labels.clone()),
        spec: Some(spec),
    };
    let dns_port = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    vec![
        policy(
            "enclii-default-deny",
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..Default::default()
            },
        ),
        policy(
            "enclii-allow-ingress",
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            namespace_selector: Some(namespace_named(&config.ingress_namespace)),
                            ..Default::default()
                        },
                        same_namespace.clone(),
                    ]),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        ),
        policy(
            "enclii-allow-egress",
            NetworkPolicySpec {
                pod_selector: Some(all_pods),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![
                    NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(namespace_named("kube-system")),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
                    },
                    NetworkPolicyEgressRule {
                        to: Some(vec![
                            same_namespace,
                            NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: "0.0.0.0/0".into(),
                                    except: Some(config.egress_blocked_cidrs.clone()),
                                }),
                                ..Default::default()
                            },
                        ]),
                        ports: None,
                    },
                ]),
                ..Default::default()
            },
        ),
    ]
}

/// One `Secret` per [`enclii_deploy_contract::SecretEnv`], and one PVC per volume.
pub fn service_config_objects(workload: &Workload) -> ServiceConfigObjects {
    let ns = namespace_name(&workload.key);
    let labels = labels(workload, Track::Stable);
    let secrets = workload
        .secrets
        .iter()
        .map(|s| Secret {
            metadata: meta(dns_name(&s.name, 253), &ns, labels.clone()),
            type_: Some("Opaque".into()),
            data: Some(
                s.entries
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.expose().as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        })
        .collect();
    let volumes = workload
        .spec
        .volumes
        .iter()
        .map(|v| PersistentVolumeClaim {
            metadata: meta(volume_claim_name(&workload.key, &v.name), &ns, labels.clone()),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: v.class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(v.size.clone()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ServiceConfigObjects { secrets, volumes }
}

fn volume_claim_name(key: &ServiceKey, volume: &str) -> String {
    dns_name(&format!("{}-{volume}", key.service), MAX_NAME)
}

/// The stable track of `workload`: Deployment, Service (when it has ports), Ingress (when it
/// has routes), HPA (when autoscaled) and one CronJob per spec job.
pub fn stable_objects(workload: &Workload, config: &KubernetesConfig) -> StableObjects {
    let key = &workload.key;
    let name = stable_name(key);
    let autoscaled = workload.spec.autoscaling.hpa.is_some();
    let replicas = (!autoscaled).then_some(workload.spec.runtime.replicas.min);
    StableObjects {
        deployment: deployment(workload, Track::Stable, &name, replicas),
        service: service(workload, Track::Stable, &name),
        ingress: ingress(workload, config, &name, &name, None),
        autoscaler: autoscaler(workload, &name),
        cron_jobs: workload.spec.jobs.iter().map(|job| cron_job(workload, job)).collect(),
    }
}

/// A canary of `workload` at `percent` of the traffic: `<service>-canary` Deployment (at
/// `replicas.min`, never autoscaled) and Service, and an ingress-nginx canary Ingress on the
/// same hosts and paths, so the split is exact. TLS stays with the stable Ingress.
pub fn canary_objects(workload: &Workload, config: &KubernetesConfig, percent: u8) -> CanaryObjects {
    let key = &workload.key;
    let name = canary_name(key);
    let stable = stable_objects(workload, config);
    let promotion = ConfigMap {
        metadata: meta(name.clone(), &namespace_name(key), labels(workload, Track::Canary)),
        data: Some(BTreeMap::from([(
            PROMOTION_KEY.to_string(),
            serde_json::to_string(&stable).expect("k8s objects serialize"),
        )])),
        ..Default::default()
    };
    CanaryObjects {
        deployment: deployment(workload, Track::Canary, &name, Some(workload.spec.runtime.replicas.min)),
        service: service(workload, Track::Canary, &name),
        ingress: ingress(workload, config, &name, &name, Some(percent)),
        promotion,
    }
}

fn deployment(workload: &Workload, track: Track, name: &str, replicas: Option<u32>) -> Deployment {
    let labels = labels(workload, track);
    Deployment {
        metadata: meta(name.into(), &namespace_name(&workload.key), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: replicas.map(to_i32),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&workload.key, track)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_SECRETS_HASH.to_string(),
                        secrets_hash(workload),
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod_spec(
                    workload,
                    container(workload, workload.spec.runtime.cmd.clone(), true),
                    true,
                )),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A digest of the secrets' names, keys and values: changes when a secret is rotated.
fn secrets_hash(workload: &Workload) -> String {
    let mut hasher = Sha256::new();
    for secret in &workload.secrets {
        hasher.update(secret.name.as_bytes());
        for (k, v) in &secret.entries {
            hasher.update([0]);
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v.expose().as_bytes());
        }
        hasher.update([1]);
    }
    hex(&hasher.finalize()[..8])
}

fn pod_spec(workload: &Workload, container: Container, with_volumes: bool) -> PodSpec {
    let volumes: Vec<Volume> = workload
        .spec
        .volumes
        .iter()
        .map(|v| Volume {
            name: dns_name(&v.name, MAX_NAME),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume_claim_name(&workload.key, &v.name),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    PodSpec {
        containers: vec![container],
        volumes: (with_volumes && !volumes.is_empty()).then_some(volumes),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..Default::default()
    }
}

/// The workload's container; `args` replaces the image's `CMD` (its entrypoint stays), as
/// `docker run IMAGE ARGS…` does.
fn container(workload: &Workload, args: Option<Vec<String>>, serving: bool) -> Container {
    let spec = &workload.spec;
    let ports: Vec<ContainerPort> = spec
        .runtime
        .ports
        .iter()
        .map(|&p| ContainerPort {
            container_port: to_i32(p),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            ..Default::default()
        })
        .collect();
    let env_from: Vec<EnvFromSource> = workload
        .secrets
        .iter()
        .map(|s| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: dns_name(&s.name, 253),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    let mounts: Vec<VolumeMount> = spec
        .volumes
        .iter()
        .map(|v| VolumeMount {
            name: dns_name(&v.name, MAX_NAME),
            mount_path: v.mount_path.clone(),
            ..Default::default()
        })
        .collect();
    let first_port = spec.runtime.ports.first().copied();
    Container {
        name: dns_name(&workload.key.service, MAX_NAME),
        image: Some(workload.image.clone()),
        args,
        ports: (serving && !ports.is_empty()).then_some(ports),
        env: (!env.is_empty()).then_some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources: resources(workload),
        readiness_probe: serving
            .then(|| probe(spec.health.readiness.as_ref(), first_port))
            .flatten(),
        liveness_probe: serving
            .then(|| probe(spec.health.liveness.as_ref(), first_port))
            .flatten(),
        volume_mounts: (serving && !mounts.is_empty()).then_some(mounts),
        ..Default::default()
    }
}

fn resources(workload: &Workload) -> Option<ResourceRequirements> {
    let runtime = &workload.spec.runtime;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = runtime.cpu_millis() {
        requests.insert("cpu".to_string(), Quantity(format!("{cpu}m")));
    }
    if let Some(memory) = &runtime.memory {
        requests.insert("memory".to_string(), Quantity(memory.clone()));
        limits.insert("memory".to_string(), Quantity(memory.clone()));
    }
    (!requests.is_empty()).then(|| ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

/// A probe from the spec: `httpGet` on `port` (or the first runtime port), or `tcpSocket`.
/// `None` when the spec has none, or an HTTP probe has no port to use.
fn probe(spec: Option<&SpecProbe>, first_port: Option<u32>) -> Option<Probe> {
    let spec = spec?;
    let mut probe = Probe {
        period_seconds: Some(spec.period_seconds.map_or(PROBE_PERIOD_SECONDS, to_i32)),
        timeout_seconds: Some(spec.timeout_seconds.map_or(PROBE_TIMEOUT_SECONDS, to_i32)),
        failure_threshold: Some(spec.failure_threshold.map_or(PROBE_FAILURE_THRESHOLD, to_i32)),
        ..Default::default()
    };
    if let Some(path) = &spec.http_get {
        probe.http_get = Some(HTTPGetAction {
            path: Some(path.clone()),
            port: IntOrString::Int(to_i32(spec.port.or(first_port)?)),
            ..Default::default()
        });
    } else if let Some(port) = spec.tcp_socket {
        probe.tcp_socket = Some(TCPSocketAction {
            port: IntOrString::Int(to_i32(port)),
            ..Default::default()
        });
    } else {
        return None;
    }
    Some(probe)
}

fn service(workload: &Workload, track: Track, name: &str) -> Option<Service> {
    let ports = &workload.spec.runtime.ports;
    if ports.is_empty() {
        return None;
    }
    Some(Service {
        metadata: meta(name.into(), &namespace_name(&workload.key), labels(workload, track)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&workload.key, track)),
            ports: Some(
                ports
                    .iter()
                    .map(|&p| ServicePort {
                        name: Some(format!("tcp-{p}")),
                        port: to_i32(p),
                        target_port: Some(IntOrString::Int(to_i32(p))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Ingress of a track's routes, to `backend`'s first port. The stable one carries TLS
/// (one cert-manager certificate, `<service>-tls`, for every TLS host); a canary one
/// (`canary_weight` set) only the ingress-nginx canary annotations.
fn ingress(
    workload: &Workload,
    config: &KubernetesConfig,
    name: &str,
    backend: &str,
    canary_weight: Option<u8>,
) -> Option<Ingress> {
    let port = *workload.spec.runtime.ports.first()?;
    if workload.routes.is_empty() {
        return None;
    }
    let track = if canary_weight.is_some() {
        Track::Canary
    } else {
        Track::Stable
    };
    let mut by_host: BTreeMap<&str, Vec<&RouteBinding>> = BTreeMap::new();
    for route in &workload.routes {
        by_host.entry(&route.host).or_default().push(route);
    }
    let rules = by_host
        .iter()
        .map(|(host, routes)| IngressRule {
            host: Some(host.to_string()),
            http: Some(HTTPIngressRuleValue {
                paths: routes
                    .iter()
                    .map(|r| HTTPIngressPath {
                        path: Some(r.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: backend.into(),
                                port: Some(ServiceBackendPort {
                                    number: Some(to_i32(port)),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    })
                    .collect(),
            }),
        })
        .collect();
    let tls_hosts: Vec<String> = by_host
        .iter()
        .filter(|(_, routes)| routes.iter().any(|r| r.tls))
        .map(|(host, _)| host.to_string())
        .collect();
    let mut annotations = BTreeMap::new();
    let mut tls = None;
    match canary_weight {
        Some(weight) => {
            annotations.insert(ANNOTATION_CANARY.to_string(), "true".to_string());
            annotations.insert(ANNOTATION_CANARY_WEIGHT.to_string(), weight.to_string());
        }
        None if !tls_hosts.is_empty() => {
            annotations.insert(ANNOTATION_CLUSTER_ISSUER.to_string(), config.cluster_issuer.clone());
            tls = Some(vec![IngressTLS {
                hosts: Some(tls_hosts),
                secret_name: Some(dns_name(&format!("{}-tls", workload.key.service), 253)),
            }]);
        }
        None => {}
    }
    let mut metadata = meta(name.into(), &namespace_name(&workload.key), labels(workload, track));
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(config.ingress_class.clone()),
            rules: Some(rules),
            tls,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn autoscaler(workload: &Workload, name: &str) -> Option<HorizontalPodAutoscaler> {
    let hpa = workload.spec.autoscaling.hpa?;
    let replicas = workload.spec.runtime.replicas;
    Some(HorizontalPodAutoscaler {
        metadata: meta(
            name.into(),
            &namespace_name(&workload.key),
            labels(workload, Track::Stable),
        ),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.into(),
            },
            min_replicas: Some(to_i32(replicas.min)),
            max_replicas: to_i32(replicas.max),
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(to_i32(hpa.cpu_target_utilization)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A spec job on its schedule (UTC), kept suspended: Enclii's Timetable fires the runs (one
/// history, one log stream, the queue's retries, no overlap), each as a Job from this template
/// (`run_job`), so the cluster holds the schedule and template without ever running them twice.
/// An operator can still start one by hand with `kubectl create job --from=cronjob/<name>`.
fn cron_job(workload: &Workload, job: &enclii_domain::spec::Job) -> CronJob {
    let name = dns_name(&format!("{}-{}", workload.key.service, job.name), MAX_CRON_JOB_NAME);
    let mut labels = labels(workload, Track::Stable);
    labels.insert(LABEL_JOB.into(), dns_name(&job.name, MAX_NAME));
    CronJob {
        metadata: meta(name, &namespace_name(&workload.key), labels.clone()),
        spec: Some(CronJobSpec {
            schedule: job.schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            suspend: Some(true),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(job_spec(workload, job.args.clone(), labels, Some(3), None)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn job_spec(
    workload: &Workload,
    args: Vec<String>,
    labels: BTreeMap<String, String>,
    backoff_limit: Option<i32>,
    deadline_seconds: Option<i64>,
) -> JobSpec {
    let mut pod = pod_spec(workload, container(workload, Some(args), false), false);
    pod.restart_policy = Some("Never".into());
    JobSpec {
        backoff_limit,
        active_deadline_seconds: deadline_seconds,
        ttl_seconds_after_finished: Some(86_400),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

/// A one-off run of a spec job: no retries here (the queue retries), killed by the cluster at
/// `deadline_seconds` too.
pub fn job_run(workload: &Workload, job: &str, args: Vec<String>, name: String, deadline_seconds: i64) -> Job {
    let mut labels = labels(workload, Track::Stable);
    labels.insert(LABEL_JOB.into(), dns_name(job, MAX_NAME));
    Job {
        metadata: meta(name, &namespace_name(&workload.key), labels.clone()),
        spec: Some(job_spec(workload, args, labels, Some(0), Some(deadline_seconds))),
        ..Default::default()
    }
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
