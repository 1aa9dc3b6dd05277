//! A track's `Ingress`: the stable one with cert-manager TLS, a canary one with ingress-nginx's
//! canary annotations.

use std::collections::BTreeMap;

use enclii_deploy_contract::{RouteBinding, Track, Workload};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};

use super::{
    ANNOTATION_CANARY, ANNOTATION_CANARY_WEIGHT, ANNOTATION_CLUSTER_ISSUER, dns_name, labels, meta, namespace_name,
    to_i32,
};
use crate::config::KubernetesConfig;

/// The Ingress of a track's routes, to `backend`'s first port. The stable one carries TLS
/// (one cert-manager certificate, `<service>-tls`, for every TLS host); a canary one
/// (`canary_weight` set) only the ingress-nginx canary annotations.
pub(super) fn ingress(
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
