//! The environment's `NetworkPolicy`s: default deny, then ingress from the ingress controller
//! and the namespace itself, egress to DNS, the namespace and addresses outside the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::config::KubernetesConfig;

pub(super) fn network_policies(
    ns: &str,
    labels: &BTreeMap<String, String>,
    config: &KubernetesConfig,
) -> Vec<NetworkPolicy> {
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
