//! A service's workload objects: its Secrets and PVCs, and the stable track (Deployment and its
//! pod template, Service, HPA; its Ingress and CronJobs come from `ingress` and `jobs`).

use std::collections::BTreeMap;

use enclii_deploy_contract::{ServiceKey, Track, Workload};
use enclii_domain::spec::Probe as SpecProbe;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretEnvSource,
    Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::ingress::{IngressInput, stable_ingress};
use super::jobs::cron_job;
use super::{
    ANNOTATION_SECRETS_HASH, MAX_NAME, PROBE_FAILURE_THRESHOLD, PROBE_PERIOD_SECONDS, PROBE_TIMEOUT_SECONDS,
    ServiceConfigObjects, StableObjects, dns_name, hex, labels, meta, namespace_name, selector_labels, stable_name,
    to_i32,
};
use crate::config::KubernetesConfig;

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
        ingress: stable_ingress(&IngressInput::of_workload(workload, Track::Stable), config),
        autoscaler: autoscaler(workload, &name),
        cron_jobs: workload.spec.jobs.iter().map(|job| cron_job(workload, job)).collect(),
    }
}

pub(super) fn deployment(workload: &Workload, track: Track, name: &str, replicas: Option<u32>) -> Deployment {
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

pub(super) fn pod_spec(workload: &Workload, container: Container, with_volumes: bool) -> PodSpec {
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
pub(super) fn container(workload: &Workload, args: Option<Vec<String>>, serving: bool) -> Container {
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

pub(super) fn service(workload: &Workload, track: Track, name: &str) -> Option<Service> {
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
