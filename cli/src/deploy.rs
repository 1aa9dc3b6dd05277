//! `enclii server`'s deploy configuration: which target runs releases, and the Junctions router
//! in front of the Docker target.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use enclii_deploy_contract::Target;
use enclii_deploy_docker::{DockerTarget, DockerTargetConfig, Junctions, RegistryLogin};
use enclii_store::Prices;
use tracing::info;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// The Docker engine when one answers on the Docker host; else none.
    Auto,
    /// Containers on one Docker engine behind the Junctions router.
    Docker,
    /// A Kubernetes cluster (the in-cluster config or `~/.kube/config`).
    Kubernetes,
    /// No deploys here: deploy jobs wait for a worker that has a target.
    None,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Where releases run.
    #[arg(
        long = "deploy-target",
        env = "ENCLII_DEPLOY_TARGET",
        value_enum,
        default_value = "auto"
    )]
    target: TargetKind,
    /// Address of the Junctions router (Docker target): routes by host to the services.
    #[arg(
        long = "router-listen",
        env = "ENCLII_ROUTER_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    router_listen: SocketAddr,
    /// The port users reach the router on, for the URLs deploys report (default: its listen port;
    /// set it when a proxy or port mapping sits in front).
    #[arg(long = "router-public-port", env = "ENCLII_ROUTER_PUBLIC_PORT")]
    router_public_port: Option<u16>,
    /// Previews answer on `<service>-preview-<n>.<domain>`.
    #[arg(
        long = "preview-domain",
        env = "ENCLII_PREVIEW_DOMAIN",
        default_value = "preview.localhost"
    )]
    preview_domain: String,
    /// Every deployment also answers on a host under this domain, no proof of ownership needed:
    /// `<service>.<project>.<domain>` in the service's home environment,
    /// `<service>-<env>.<project>.<domain>` in others. Point a wildcard DNS record
    /// `*.<domain>` at the router. Unset: no such hosts.
    #[arg(long = "base-domain", env = "ENCLII_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// After an add-on's credentials are rotated, how long the previous login keeps working while
    /// the services that read the add-on roll to the new one; then it is disabled.
    #[arg(
        long = "addon-retire-seconds",
        env = "ENCLII_ADDON_RETIRE_SECONDS",
        default_value_t = 600
    )]
    addon_retire_seconds: u64,
    /// How long a new release may take to pass its readiness probe (Docker) or to roll out
    /// (Kubernetes).
    #[arg(
        long = "deploy-health-timeout-seconds",
        env = "ENCLII_DEPLOY_HEALTH_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    health_timeout_seconds: u64,
    /// Kubernetes: `ingressClassName` of every Ingress (ingress-nginx, for exact canary splits).
    #[arg(
        long = "k8s-ingress-class",
        env = "ENCLII_K8S_INGRESS_CLASS",
        default_value = "nginx"
    )]
    k8s_ingress_class: String,
    /// Kubernetes: the ingress controller's namespace (network policies admit traffic from it).
    #[arg(
        long = "k8s-ingress-namespace",
        env = "ENCLII_K8S_INGRESS_NAMESPACE",
        default_value = "ingress-nginx"
    )]
    k8s_ingress_namespace: String,
    /// Kubernetes: the cert-manager ClusterIssuer for routes with TLS.
    #[arg(
        long = "k8s-cluster-issuer",
        env = "ENCLII_K8S_CLUSTER_ISSUER",
        default_value = "letsencrypt"
    )]
    k8s_cluster_issuer: String,
    /// Kubernetes: Prometheus' base URL, read by canary analysis (ingress-nginx metrics).
    #[arg(long = "prometheus-url", env = "ENCLII_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Cost showback: cents per CPU-hour.
    #[arg(long = "price-cpu-hour-cents", env = "ENCLII_PRICE_CPU_HOUR_CENTS", default_value_t = Prices::default().cpu_hour_cents)]
    price_cpu_hour_cents: f64,
    /// Cost showback: cents per GiB-hour of memory.
    #[arg(long = "price-ram-gib-hour-cents", env = "ENCLII_PRICE_RAM_GIB_HOUR_CENTS", default_value_t = Prices::default().ram_gib_hour_cents)]
    price_ram_gib_hour_cents: f64,
    /// Cost showback: cents per GiB-hour of volume storage.
    #[arg(long = "price-volume-gib-hour-cents", env = "ENCLII_PRICE_VOLUME_GIB_HOUR_CENTS", default_value_t = Prices::default().volume_gib_hour_cents)]
    price_volume_gib_hour_cents: f64,
    /// Cost showback: cents per GiB of egress.
    #[arg(long = "price-egress-gib-cents", env = "ENCLII_PRICE_EGRESS_GIB_CENTS", default_value_t = Prices::default().egress_gib_cents)]
    price_egress_gib_cents: f64,
}

/// A running target, and the router to serve when it has one.
pub struct DeployTarget {
    pub target: Arc<dyn Target>,
    pub router: Option<(SocketAddr, Arc<Junctions>)>,
}

impl DeployArgs {
    /// Why this process has no deploy target, and what to set to have one.
    pub fn why_off(&self, docker_host: &str) -> String {
        match self.target {
            TargetKind::None => "ENCLII_DEPLOY_TARGET=none; set it to auto, docker or kubernetes".into(),
            _ => format!(
                "no Docker engine answers at {docker_host}; start Docker, set ENCLII_DOCKER_HOST, or ENCLII_DEPLOY_TARGET=kubernetes"
            ),
        }
    }

    /// What usage costs, for cost samples and budgets.
    pub fn prices(&self) -> Prices {
        Prices {
            cpu_hour_cents: self.price_cpu_hour_cents,
            ram_gib_hour_cents: self.price_ram_gib_hour_cents,
            volume_gib_hour_cents: self.price_volume_gib_hour_cents,
            egress_gib_cents: self.price_egress_gib_cents,
        }
    }

    pub fn deployer_config(&self) -> enclii_deploy::DeployerConfig {
        enclii_deploy::DeployerConfig {
            preview_domain: self.preview_domain.clone(),
            base_domain: self
                .base_domain
                .as_deref()
                .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
            addon_retire_after: std::time::Duration::from_secs(self.addon_retire_seconds),
            artefacts: None,
        }
    }

    /// Connects the configured target; `None` when deploys do not run in this process.
    /// `registry_login` lets the Docker target pull release images the engine lacks.
    pub async fn connect(
        &self,
        docker_host: &str,
        data_dir: &Path,
        registry_login: Option<RegistryLogin>,
        events: Arc<dyn enclii_deploy_contract::ReplicaEvents>,
    ) -> anyhow::Result<Option<DeployTarget>> {
        match self.target {
            TargetKind::None => Ok(None),
            TargetKind::Kubernetes => {
                let config = enclii_deploy_kubernetes::KubernetesConfig {
                    ingress_class: self.k8s_ingress_class.clone(),
                    ingress_namespace: self.k8s_ingress_namespace.clone(),
                    cluster_issuer: self.k8s_cluster_issuer.clone(),
                    prometheus_url: self.prometheus_url.clone(),
                    rollout_timeout: Duration::from_secs(self.health_timeout_seconds.max(1)),
                    ..Default::default()
                };
                let target = enclii_deploy_kubernetes::KubernetesTarget::infer(config)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("kubernetes target: {e} (is a kubeconfig or in-cluster config present?)")
                    })?;
                Ok(Some(DeployTarget {
                    target: Arc::new(target),
                    router: None,
                }))
            }
            TargetKind::Docker | TargetKind::Auto => {
                let junctions = Junctions::new(self.router_public_port.unwrap_or(self.router_listen.port()));
                let mut config = DockerTargetConfig::new(data_dir.join("junctions.json"));
                config.health_timeout = Duration::from_secs(self.health_timeout_seconds.max(1));
                config.registry_login = registry_login;
                config.events = Some(events);
                match DockerTarget::connect(docker_host, junctions.clone(), config).await {
                    Ok(target) => Ok(Some(DeployTarget {
                        target,
                        router: Some((self.router_listen, junctions)),
                    })),
                    Err(e) if self.target == TargetKind::Auto => {
                        info!(error = %e, "deploys disabled: no Docker engine (set ENCLII_DEPLOY_TARGET to choose a target)");
                        Ok(None)
                    }
                    Err(e) => Err(anyhow::anyhow!("deploy target: {e}")),
                }
            }
        }
    }
}
