//! How the target is set up for one cluster.

use std::time::Duration;

/// Cluster-specific settings of the Kubernetes target. [`Default`] fits an ingress-nginx and
/// cert-manager installation with their usual names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// `spec.ingressClassName` of every Ingress; must be ingress-nginx for canary splits.
    pub ingress_class: String,
    /// The namespace the ingress controller runs in: the network policies admit traffic from it.
    pub ingress_namespace: String,
    /// The cert-manager `ClusterIssuer` named on Ingresses with TLS routes.
    pub cluster_issuer: String,
    /// Prometheus' base URL (e.g. `http://prometheus.monitoring:9090`) for canary analysis;
    /// without it `release_metrics` fails with a message saying to set it.
    pub prometheus_url: Option<String>,
    /// Address ranges workloads may not reach (cluster-internal ranges, cloud metadata); every
    /// other address outside the cluster is allowed.
    pub egress_blocked_cidrs: Vec<String>,
    /// How long a rollout may take before the release is reported unhealthy.
    pub rollout_timeout: Duration,
    /// How often rollout and job status are polled.
    pub poll_interval: Duration,
    /// The cluster's DNS domain: services reach an add-on at
    /// `<service>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            ingress_class: "nginx".into(),
            ingress_namespace: "ingress-nginx".into(),
            cluster_issuer: "letsencrypt".into(),
            prometheus_url: None,
            egress_blocked_cidrs: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "100.64.0.0/10",
            ]
            .map(String::from)
            .to_vec(),
            rollout_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            cluster_domain: "cluster.local".into(),
        }
    }
}
