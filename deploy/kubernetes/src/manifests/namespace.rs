//! The environment's own objects: its namespace and `ResourceQuota` (its network policies are
//! in `network`).

use std::collections::BTreeMap;

use enclii_deploy_contract::{Quota, ServiceKey};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::network::network_policies;
use super::{EnvironmentObjects, environment_labels, format_bytes, meta, namespace_name};
use crate::config::KubernetesConfig;

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
