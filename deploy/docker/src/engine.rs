//! The engine side of the Docker target: the connection, the router table saved between
//! restarts, the service's containers found by label, image pulls.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use enclii_deploy_contract::ReplicaEvents;
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{ReplicaEvent, ServiceKey};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::junctions::{Binding, Junctions};

pub(crate) const LABEL_MANAGED: &str = "dev.enclii.managed";
pub(crate) const LABEL_PROJECT: &str = "dev.enclii.project";
pub(crate) const LABEL_ENVIRONMENT: &str = "dev.enclii.environment";
pub(crate) const LABEL_SERVICE: &str = "dev.enclii.service";
pub(crate) const LABEL_RELEASE: &str = "dev.enclii.release";
pub(crate) const LABEL_ROLE: &str = "dev.enclii.role";
/// Which target created a replica (its router table's path): the sweep removes only its own, so
/// targets of other data directories on the same engine (tests, a second install) are left alone.
pub(crate) const LABEL_OWNER: &str = "dev.enclii.owner";

/// Login for pulling release images the engine does not have yet.
#[derive(Clone)]
pub struct RegistryLogin {
    /// `host[:port]` the credentials are for; never sent elsewhere.
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct DockerTargetConfig {
    /// How long a new release may take to pass its readiness probe.
    pub health_timeout: Duration,
    /// Where the router table is saved between restarts.
    pub state_file: PathBuf,
    /// The address replicas' ports are published on (the router connects there).
    pub publish_ip: IpAddr,
    pub registry_login: Option<RegistryLogin>,
    /// Where replicas' exits and failed liveness probes are reported (the service's history).
    pub events: Option<Arc<dyn ReplicaEvents>>,
}

impl std::fmt::Debug for DockerTargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerTargetConfig")
            .field("health_timeout", &self.health_timeout)
            .field("state_file", &self.state_file)
            .field("publish_ip", &self.publish_ip)
            .field("registry_login", &self.registry_login)
            .field("events", &self.events.is_some())
            .finish()
    }
}

impl DockerTargetConfig {
    pub fn new(state_file: PathBuf) -> Self {
        Self {
            health_timeout: Duration::from_secs(60),
            state_file,
            publish_ip: IpAddr::from([127, 0, 0, 1]),
            registry_login: None,
            events: None,
        }
    }
}

/// What is saved of the router table.
#[derive(Default, Serialize, Deserialize)]
struct SavedState {
    services: Vec<(ServiceKey, Binding)>,
    /// Provisioned volume bytes per service (for cost samples).
    volume_bytes: Vec<(ServiceKey, u64)>,
}

pub struct DockerTarget {
    pub(crate) docker: Docker,
    pub(crate) junctions: Arc<Junctions>,
    pub(crate) config: DockerTargetConfig,
    /// Deploys, shifts and removals run one at a time: each reads and rewrites the table.
    pub(crate) changes: tokio::sync::Mutex<()>,
    /// Environment networks are created one at a time (`network.rs`): the engine does not refuse
    /// a second network of the same name.
    pub(crate) networks: tokio::sync::Mutex<()>,
    pub(crate) volume_bytes: std::sync::Mutex<HashMap<ServiceKey, u64>>,
    /// Liveness of the replicas with a liveness probe, by container name (`liveness.rs`).
    pub(crate) liveness: std::sync::Mutex<HashMap<String, crate::liveness::Liveness>>,
    /// Replicas this process is restarting after a failed liveness probe: their `die` is not an
    /// exit of their own (`watch.rs`).
    pub(crate) restarting: std::sync::Mutex<std::collections::HashSet<String>>,
}

pub(crate) fn docker_error(what: &str) -> impl Fn(bollard::errors::Error) -> DeployError + '_ {
    move |e| DeployError::docker(format!("{what}: {e}"), e)
}

impl DockerTarget {
    /// Reports a replica's event to the configured sink, if any.
    pub(crate) async fn report(&self, event: ReplicaEvent) {
        if let Some(events) = &self.config.events {
            events.record(event).await;
        }
    }

    /// Whether the binding serves `release` with this replica's generation (a replica of an
    /// older generation, or of a release no longer served, is on its way out).
    pub(crate) fn serves(&self, key: &ServiceKey, release: i64, name: &str) -> bool {
        self.junctions.binding(key).is_some_and(|b| {
            b.stable.iter().chain(b.canary.iter().map(|(c, _)| c)).any(|backends| {
                backends.release == release
                    && (backends.generation.is_empty() || name.contains(&format!("-g{}-", backends.generation)))
            })
        })
    }
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

impl DockerTarget {
    /// Connects to the engine, restores the router table saved by an earlier run and starts
    /// following the engine (`watch.rs`) for as long as the target lives.
    pub async fn connect(
        docker_host: &str,
        junctions: Arc<Junctions>,
        config: DockerTargetConfig,
    ) -> Result<Arc<Self>> {
        let socket = docker_host.strip_prefix("unix://").unwrap_or(docker_host);
        let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| DeployError::docker(format!("engine at {docker_host} unreachable: {e}"), e))?;
        docker.ping().await.map_err(|e| {
            DeployError::docker(
                format!("engine at {docker_host} unreachable: {e}; is dockerd running?"),
                e,
            )
        })?;
        let target = Self {
            docker,
            junctions,
            config,
            changes: tokio::sync::Mutex::new(()),
            networks: tokio::sync::Mutex::new(()),
            volume_bytes: std::sync::Mutex::new(HashMap::new()),
            liveness: std::sync::Mutex::new(HashMap::new()),
            restarting: std::sync::Mutex::new(std::collections::HashSet::new()),
        };
        target.restore().await?;
        let target = Arc::new(target);
        target.watch();
        target.watch_liveness();
        Ok(target)
    }

    /// The value of this target's [`LABEL_OWNER`].
    pub(crate) fn owner(&self) -> String {
        self.config.state_file.display().to_string()
    }

    pub fn junctions(&self) -> &Arc<Junctions> {
        &self.junctions
    }

    async fn restore(&self) -> Result<()> {
        let saved = match tokio::fs::read(&self.config.state_file).await {
            Ok(bytes) => serde_json::from_slice::<SavedState>(&bytes).map_err(|e| {
                DeployError::docker(
                    format!(
                        "router state {} is unreadable ({e}); move it away to start with an empty table",
                        self.config.state_file.display()
                    ),
                    e,
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(DeployError::docker(
                    format!("reading {}: {e}", self.config.state_file.display()),
                    e,
                ));
            }
        };
        let mut services = BTreeMap::new();
        for (key, mut binding) in saved.services {
            // Ports may have changed if the engine restarted the containers.
            if let Some(stable) = &mut binding.stable {
                stable.addrs = self.replica_addrs(&key, stable.release, &stable.generation).await?;
            }
            if let Some((canary, _)) = &mut binding.canary {
                canary.addrs = self.replica_addrs(&key, canary.release, &canary.generation).await?;
            }
            services.insert(key, binding);
        }
        info!(services = services.len(), "router table restored");
        self.junctions.restore(services);
        *self.volume_bytes.lock().unwrap_or_else(|p| p.into_inner()) = saved.volume_bytes.into_iter().collect();
        Ok(())
    }

    pub(crate) async fn save(&self) -> Result<()> {
        let state = SavedState {
            services: self.junctions.bindings().into_iter().collect(),
            volume_bytes: self
                .volume_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| DeployError::docker(e.to_string(), e))?;
        let tmp = self.config.state_file.with_extension("tmp");
        if let Some(dir) = self.config.state_file.parent() {
            tokio::fs::create_dir_all(dir).await.ok();
        }
        tokio::fs::write(&tmp, json)
            .await
            .and(tokio::fs::rename(&tmp, &self.config.state_file).await)
            .map_err(|e| {
                DeployError::docker(
                    format!("saving the router table to {}: {e}", self.config.state_file.display()),
                    e,
                )
            })
    }

    pub(crate) fn labels(key: &ServiceKey, release: i64, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_PROJECT.to_string(), key.project.clone()),
            (LABEL_ENVIRONMENT.to_string(), key.environment.clone()),
            (LABEL_SERVICE.to_string(), key.service.clone()),
            (LABEL_RELEASE.to_string(), release.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
        ])
    }

    /// The service's containers (all releases, or one), running or not: (name, release).
    pub(crate) async fn containers(&self, key: &ServiceKey, release: Option<i64>) -> Result<Vec<(String, i64, bool)>> {
        let mut labels = Self::service_labels(key);
        labels.push(format!("{LABEL_ROLE}=replica"));
        if let Some(release) = release {
            labels.push(format!("{LABEL_RELEASE}={release}"));
        }
        Ok(self
            .labelled_containers(labels)
            .await?
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                let release = c.labels?.get(LABEL_RELEASE)?.parse().ok()?;
                let running = c.state.is_some_and(|s| s.to_string() == "running");
                Some((name, release, running))
            })
            .collect())
    }

    /// Every container, running or not, carrying all of `labels` (`key=value`).
    pub(crate) async fn labelled_containers(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_string(), labels)]))
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error("listing containers"))
    }

    /// Where the running replicas of `release`'s `generation` (all of them for an empty one)
    /// answer: a replica of another generation — one a roll is starting, not yet ready, or one it
    /// is about to remove — is not the router's.
    pub(crate) async fn replica_addrs(
        &self,
        key: &ServiceKey,
        release: i64,
        generation: &str,
    ) -> Result<Vec<SocketAddr>> {
        let mut addrs = Vec::new();
        let marker = format!("-g{generation}-");
        for (name, _, running) in self.containers(key, Some(release)).await? {
            if !generation.is_empty() && !name.contains(&marker) {
                continue;
            }
            if running && let Some(addr) = self.published_addr(&name).await? {
                addrs.push(addr);
            }
        }
        addrs.sort();
        Ok(addrs)
    }

    pub(crate) async fn published_addr(&self, container: &str) -> Result<Option<SocketAddr>> {
        let inspect = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(docker_error("inspecting a replica"))?;
        let port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|ports| ports.into_values().flatten().flatten().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
        Ok(port.map(|p| SocketAddr::new(self.config.publish_ip, p)))
    }

    pub(crate) async fn remove_container(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DeployError::docker(format!("removing {name}: {e}"), e)),
        }
    }

    /// The labels every container and volume of the service carries.
    pub(crate) fn service_labels(key: &ServiceKey) -> Vec<String> {
        vec![
            format!("{LABEL_PROJECT}={}", key.project),
            format!("{LABEL_ENVIRONMENT}={}", key.environment),
            format!("{LABEL_SERVICE}={}", key.service),
        ]
    }

    /// Every container of the service, replicas and job runs, running or not: (id, mounted
    /// volume names).
    async fn service_containers(&self, key: &ServiceKey) -> Result<Vec<(String, Vec<String>)>> {
        Ok(self
            .labelled_containers(Self::service_labels(key))
            .await?
            .into_iter()
            .filter_map(|c| {
                let volumes = c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| m.typ.as_deref() == Some("volume"))
                    .filter_map(|m| m.name)
                    .collect();
                Some((c.id?, volumes))
            })
            .collect())
    }

    /// The service's volumes: those labelled as its own, and those its containers mount (volumes
    /// created before they were labelled).
    pub(crate) async fn service_volumes(&self, key: &ServiceKey) -> Result<Vec<String>> {
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&HashMap::from([("label".to_string(), Self::service_labels(key))]))
            .build();
        let labelled = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(docker_error("listing volumes"))?;
        let mut names: Vec<String> = labelled
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let own_prefix = Self::volume_name(key, "");
        for (_, mounted) in self.service_containers(key).await? {
            names.extend(mounted.into_iter().filter(|name| name.starts_with(&own_prefix)));
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes every container of the service (replicas of every release, job runs).
    pub(crate) async fn remove_service_containers(&self, key: &ServiceKey) -> Result<()> {
        for (id, _) in self.service_containers(key).await? {
            self.remove_container(&id).await?;
        }
        Ok(())
    }

    /// Removes the service's replicas of every release but those in `keep`.
    pub(crate) async fn remove_releases_except(&self, key: &ServiceKey, keep: &[i64]) -> Result<()> {
        for (name, release, _) in self.containers(key, None).await? {
            if !keep.contains(&release) {
                self.remove_container(&name).await?;
                self.junctions.forget(key, release);
            }
        }
        Ok(())
    }

    /// Pulls the image unless the engine has it (a release built here always does).
    pub(crate) async fn ensure_image(&self, image: &str) -> Result<()> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DeployError::docker(format!("inspecting image {image}: {e}"), e)),
        }
        let credentials = self
            .config
            .registry_login
            .as_ref()
            .filter(|login| image.starts_with(&format!("{}/", login.host)))
            .map(|login| DockerCredentials {
                username: Some(login.username.clone()),
                password: Some(login.password.clone()),
                serveraddress: Some(login.host.clone()),
                ..Default::default()
            });
        let options = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut pull = self.docker.create_image(Some(options), None, credentials);
        while let Some(progress) = pull.next().await {
            progress.map_err(|e| DeployError::Refused(format!("image {image} cannot be pulled: {e}")))?;
        }
        Ok(())
    }

    pub(crate) fn require_binding(&self, key: &ServiceKey) -> Result<Binding> {
        self.junctions
            .binding(key)
            .ok_or_else(|| DeployError::NotFound(format!("{key} has nothing deployed on this Docker engine")))
    }

    pub(crate) fn require_canary(&self, key: &ServiceKey, release: i64) -> Result<Binding> {
        let binding = self.require_binding(key)?;
        match &binding.canary {
            Some((canary, _)) if canary.release == release => Ok(binding),
            _ => Err(DeployError::NotFound(format!(
                "release {release} is not the canary of {key}"
            ))),
        }
    }
}
