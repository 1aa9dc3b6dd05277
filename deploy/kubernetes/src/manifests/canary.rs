//! A canary's objects: `<service>-canary` Deployment and Service, its canary Ingress, and the
//! ConfigMap holding the stable objects `promote` applies.

use std::collections::BTreeMap;

use enclii_deploy_contract::{ServiceKey, Track, Workload};
use k8s_openapi::api::core::v1::ConfigMap;

use super::ingress::{IngressInput, canary_ingress};
use super::workload::{deployment, service, stable_objects};
use super::{CanaryObjects, PROMOTION_KEY, StableObjects, canary_name, labels, meta, namespace_name};
use crate::config::KubernetesConfig;

/// A canary of `workload` at `percent` of the traffic: `<service>-canary` Deployment (at
/// `replicas.min`, never autoscaled) and Service, and an ingress-nginx canary Ingress on the
/// same hosts and paths, so the split is exact. TLS stays with the stable Ingress.
pub fn canary_objects(workload: &Workload, config: &KubernetesConfig, percent: u8) -> CanaryObjects {
    let key = &workload.key;
    let name = canary_name(key);
    let stable = stable_objects(workload, config);
    CanaryObjects {
        deployment: deployment(workload, Track::Canary, &name, Some(workload.spec.runtime.replicas.min)),
        service: service(workload, Track::Canary, &name),
        ingress: canary_ingress(&IngressInput::of_workload(workload, Track::Canary), config, percent),
        promotion: promotion(key, labels(workload, Track::Canary), &stable),
    }
}

/// The canary's ConfigMap `<service>-canary` (labelled `labels`, the canary track's) holding
/// `stable`, the objects `promote` applies, as JSON.
pub fn promotion(key: &ServiceKey, labels: BTreeMap<String, String>, stable: &StableObjects) -> ConfigMap {
    ConfigMap {
        metadata: meta(canary_name(key), &namespace_name(key), labels),
        data: Some(BTreeMap::from([(
            PROMOTION_KEY.to_string(),
            serde_json::to_string(stable).expect("k8s objects serialize"),
        )])),
        ..Default::default()
    }
}
