//! A track's `Ingress`: the stable one with cert-manager TLS, a canary one with ingress-nginx's
//! canary annotations. A deploy renders them from the workload; `apply_routes` from the track's
//! running Deployment and the routes it is given, through the same [`IngressInput`].

use std::collections::BTreeMap;

use enclii_deploy_contract::{RouteBinding, ServiceKey, Track, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};

use super::{
    ANNOTATION_CANARY, ANNOTATION_CANARY_WEIGHT, ANNOTATION_CLUSTER_ISSUER, ANNOTATION_SSL_REDIRECT, canary_name,
    dns_name, labels, meta, namespace_name, own_labels, stable_name, to_i32,
};
use crate::config::KubernetesConfig;

/// What a track's Ingress is made of.
#[derive(Clone, Debug)]
pub struct IngressInput<'a> {
    pub key: &'a ServiceKey,
    /// The track's labels (release, track, who pays): the Ingress is one of the track's objects.
    pub labels: BTreeMap<String, String>,
    /// The port the routes go to, the runtime's first; `None`: nothing to route to, no Ingress.
    pub port: Option<u32>,
    pub routes: &'a [RouteBinding],
}

impl<'a> IngressInput<'a> {
    /// A deploy's: `workload`'s routes to its first port.
    pub fn of_workload(workload: &'a Workload, track: Track) -> Self {
        IngressInput {
            key: &workload.key,
            labels: labels(workload, track),
            port: workload.spec.runtime.ports.first().copied(),
            routes: &workload.routes,
        }
    }

    /// `routes` to the track `deployment` runs (as read from the cluster, or as stored for a
    /// promotion): its labels, and its container's first port, which is the runtime's first.
    pub fn of_deployment(key: &'a ServiceKey, deployment: &Deployment, routes: &'a [RouteBinding]) -> Self {
        let port = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.ports.as_ref())
            .and_then(|ports| ports.first())
            .and_then(|p| u32::try_from(p.container_port).ok());
        IngressInput {
            key,
            labels: deployment.metadata.labels.as_ref().map(own_labels).unwrap_or_default(),
            port,
            routes,
        }
    }
}

/// The stable track's Ingress `<service>`, to Service `<service>`: one cert-manager certificate,
/// `<service>-tls`, for every TLS host. `None` without routes or a port.
pub fn stable_ingress(input: &IngressInput, config: &KubernetesConfig) -> Option<Ingress> {
    ingress(input, config, &stable_name(input.key), None)
}

/// The canary's Ingress `<service>-canary`, to Service `<service>-canary`, on the same hosts and
/// paths as the stable one (so the split is exact), carrying `weight` percent of the traffic.
/// Only ingress-nginx's canary annotations: TLS and the HTTPS redirect stay with the stable
/// Ingress, whose settings ingress-nginx applies to the canary's traffic too.
pub fn canary_ingress(input: &IngressInput, config: &KubernetesConfig, weight: u8) -> Option<Ingress> {
    ingress(input, config, &canary_name(input.key), Some(weight))
}

/// The Ingress `name` (to the Service of the same name) of the input's routes.
fn ingress(input: &IngressInput, config: &KubernetesConfig, name: &str, canary_weight: Option<u8>) -> Option<Ingress> {
    let port = input.port?;
    if input.routes.is_empty() {
        return None;
    }
    let mut by_host: BTreeMap<&str, Vec<&RouteBinding>> = BTreeMap::new();
    for route in input.routes {
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
                                name: name.into(),
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
        None => {
            if !tls_hosts.is_empty() {
                annotations.insert(ANNOTATION_CLUSTER_ISSUER.to_string(), config.cluster_issuer.clone());
                tls = Some(vec![IngressTLS {
                    hosts: Some(tls_hosts),
                    secret_name: Some(dns_name(&format!("{}-tls", input.key.service), 253)),
                }]);
            }
            // ingress-nginx redirects plain HTTP to HTTPS on every host with a certificate, and
            // its `ssl-redirect` switch is per Ingress (every host and path of it), not per
            // host: one route asking for plain HTTP turns the redirect off for the whole Ingress
            // (its TLS hosts still serve HTTPS, they just no longer redirect to it).
            if input.routes.iter().any(|r| !r.tls) {
                annotations.insert(ANNOTATION_SSL_REDIRECT.to_string(), "false".to_string());
            }
        }
    }
    let mut metadata = meta(name.into(), &namespace_name(input.key), input.labels.clone());
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
