//! The single-node target: releases run as containers on one Docker engine (through bollard),
//! behind the [`Junctions`] router.
//!
//! Each replica is a container named `enclii-<project>-<environment>-<service>-r<release>-<i>`,
//! labelled with its project, environment, service and release, with the spec's CPU and memory
//! limits, restart policy `unless-stopped`, and its first port published on the loopback
//! interface for the router. A replica is healthy when the spec's readiness probe (HTTP GET or
//! TCP connect, run from the host against the published port) passes; a service without ports
//! is healthy when its container runs. The router's table is saved to `state_file` after every
//! change and reloaded (with the replicas' current ports) at start-up.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::error::{DeployError, Result};
use crate::junctions::{Backends, Binding, Junctions};
use crate::model::{
    DeployOutcome, JobRunSpec, LogLines, LogRequest, LogStream, ReleaseMetrics, ReleaseStatus, Rollout, RuntimeLogLine,
    ServiceKey, ServiceStatus, Track, Usage, Workload,
};
use crate::target::{JOB_TIMEOUT_EXIT_CODE, Target};

const LABEL_MANAGED: &str = "dev.enclii.managed";
const LABEL_PROJECT: &str = "dev.enclii.project";
const LABEL_ENVIRONMENT: &str = "dev.enclii.environment";
const LABEL_SERVICE: &str = "dev.enclii.service";
const LABEL_RELEASE: &str = "dev.enclii.release";
const LABEL_ROLE: &str = "dev.enclii.role";

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

#[derive(Clone, Debug)]
pub struct DockerTargetConfig {
    /// How long a new release may take to pass its readiness probe.
    pub health_timeout: Duration,
    /// Where the router table is saved between restarts.
    pub state_file: PathBuf,
    /// The address replicas' ports are published on (the router connects there).
    pub publish_ip: IpAddr,
    pub registry_login: Option<RegistryLogin>,
}

impl DockerTargetConfig {
    pub fn new(state_file: PathBuf) -> Self {
        Self {
            health_timeout: Duration::from_secs(60),
            state_file,
            publish_ip: IpAddr::from([127, 0, 0, 1]),
            registry_login: None,
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
    docker: Docker,
    junctions: Arc<Junctions>,
    config: DockerTargetConfig,
    /// Deploys, shifts and removals run one at a time: each reads and rewrites the table.
    changes: tokio::sync::Mutex<()>,
    volume_bytes: std::sync::Mutex<HashMap<ServiceKey, u64>>,
}

fn docker_error(what: &str) -> impl Fn(bollard::errors::Error) -> DeployError + '_ {
    move |e| DeployError::Docker(format!("{what}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

impl DockerTarget {
    /// Connects to the engine and restores the router table saved by an earlier run.
    pub async fn connect(docker_host: &str, junctions: Arc<Junctions>, config: DockerTargetConfig) -> Result<Self> {
        let socket = docker_host.strip_prefix("unix://").unwrap_or(docker_host);
        let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| DeployError::Docker(format!("engine at {docker_host} unreachable: {e}")))?;
        docker.ping().await.map_err(|e| {
            DeployError::Docker(format!("engine at {docker_host} unreachable: {e}; is dockerd running?"))
        })?;
        let target = Self {
            docker,
            junctions,
            config,
            changes: tokio::sync::Mutex::new(()),
            volume_bytes: std::sync::Mutex::new(HashMap::new()),
        };
        target.restore().await?;
        Ok(target)
    }

    pub fn junctions(&self) -> &Arc<Junctions> {
        &self.junctions
    }

    async fn restore(&self) -> Result<()> {
        let saved = match tokio::fs::read(&self.config.state_file).await {
            Ok(bytes) => serde_json::from_slice::<SavedState>(&bytes).map_err(|e| {
                DeployError::Docker(format!(
                    "router state {} is unreadable ({e}); move it away to start with an empty table",
                    self.config.state_file.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(DeployError::Docker(format!(
                    "reading {}: {e}",
                    self.config.state_file.display()
                )));
            }
        };
        let mut services = BTreeMap::new();
        for (key, mut binding) in saved.services {
            // Ports may have changed if the engine restarted the containers.
            if let Some(stable) = &mut binding.stable {
                stable.addrs = self.replica_addrs(&key, stable.release).await?;
            }
            if let Some((canary, _)) = &mut binding.canary {
                canary.addrs = self.replica_addrs(&key, canary.release).await?;
            }
            services.insert(key, binding);
        }
        info!(services = services.len(), "router table restored");
        self.junctions.restore(services);
        *self.volume_bytes.lock().unwrap_or_else(|p| p.into_inner()) = saved.volume_bytes.into_iter().collect();
        Ok(())
    }

    async fn save(&self) -> Result<()> {
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
        let json = serde_json::to_vec_pretty(&state).map_err(|e| DeployError::Docker(e.to_string()))?;
        let tmp = self.config.state_file.with_extension("tmp");
        if let Some(dir) = self.config.state_file.parent() {
            tokio::fs::create_dir_all(dir).await.ok();
        }
        tokio::fs::write(&tmp, json)
            .await
            .and(tokio::fs::rename(&tmp, &self.config.state_file).await)
            .map_err(|e| {
                DeployError::Docker(format!(
                    "saving the router table to {}: {e}",
                    self.config.state_file.display()
                ))
            })
    }

    fn labels(key: &ServiceKey, release: i64, role: &str) -> HashMap<String, String> {
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
    async fn containers(&self, key: &ServiceKey, release: Option<i64>) -> Result<Vec<(String, i64, bool)>> {
        let mut labels = vec![
            format!("{LABEL_PROJECT}={}", key.project),
            format!("{LABEL_ENVIRONMENT}={}", key.environment),
            format!("{LABEL_SERVICE}={}", key.service),
            format!("{LABEL_ROLE}=replica"),
        ];
        if let Some(release) = release {
            labels.push(format!("{LABEL_RELEASE}={release}"));
        }
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_string(), labels)]))
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error("listing containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                let release = c.labels?.get(LABEL_RELEASE)?.parse().ok()?;
                let running = c.state.is_some_and(|s| s.to_string() == "running");
                Some((name, release, running))
            })
            .collect())
    }

    async fn replica_addrs(&self, key: &ServiceKey, release: i64) -> Result<Vec<SocketAddr>> {
        let mut addrs = Vec::new();
        for (name, _, running) in self.containers(key, Some(release)).await? {
            if running && let Some(addr) = self.published_addr(&name).await? {
                addrs.push(addr);
            }
        }
        addrs.sort();
        Ok(addrs)
    }

    async fn published_addr(&self, container: &str) -> Result<Option<SocketAddr>> {
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

    async fn remove_container(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DeployError::Docker(format!("removing {name}: {e}"))),
        }
    }

    /// Removes the service's replicas of every release but those in `keep`.
    async fn remove_releases_except(&self, key: &ServiceKey, keep: &[i64]) -> Result<()> {
        for (name, release, _) in self.containers(key, None).await? {
            if !keep.contains(&release) {
                self.remove_container(&name).await?;
                self.junctions.forget(key, release);
            }
        }
        Ok(())
    }

    /// Pulls the image unless the engine has it (a release built here always does).
    async fn ensure_image(&self, image: &str) -> Result<()> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DeployError::Docker(format!("inspecting image {image}: {e}"))),
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

    fn replica_name(key: &ServiceKey, release: i64, index: u32) -> String {
        format!(
            "enclii-{}-{}-{}-r{release}-{index}",
            key.project, key.environment, key.service
        )
    }

    fn environment(workload: &Workload) -> Vec<String> {
        let mut env: Vec<String> = workload
            .spec
            .env
            .iter()
            .map(|v| format!("{}={}", v.name, v.value))
            .collect();
        for secret in &workload.secrets {
            env.extend(secret.entries.iter().map(|(k, v)| format!("{k}={}", v.expose())));
        }
        if let Some(port) = workload.spec.runtime.ports.first() {
            env.push(format!("PORT={port}"));
        }
        env
    }

    fn volume_name(key: &ServiceKey, volume: &str) -> String {
        format!("enclii-{}-{}-{}-{volume}", key.project, key.environment, key.service)
    }

    fn host_config(&self, workload: &Workload, publish: bool) -> HostConfig {
        let runtime = &workload.spec.runtime;
        let port_bindings = publish.then(|| {
            runtime
                .ports
                .first()
                .map(|port| {
                    HashMap::from([(
                        format!("{port}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some(self.config.publish_ip.to_string()),
                            host_port: Some(String::new()),
                        }]),
                    )])
                })
                .unwrap_or_default()
        });
        HostConfig {
            port_bindings,
            nano_cpus: runtime.cpu_millis().map(|m| (m * 1_000_000) as i64),
            memory: runtime.memory_bytes().map(|b| b as i64),
            restart_policy: publish.then_some(RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            mounts: Some(
                workload
                    .spec
                    .volumes
                    .iter()
                    .map(|v| Mount {
                        target: Some(v.mount_path.clone()),
                        source: Some(Self::volume_name(&workload.key, &v.name)),
                        typ: Some(MountType::VOLUME),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// Starts (or finds running) the release's replicas and waits until every one is healthy;
    /// on failure removes them and says why, with the end of the replica's log.
    async fn start_replicas(&self, workload: &Workload) -> Result<Vec<SocketAddr>> {
        let key = &workload.key;
        let runtime = &workload.spec.runtime;
        let existing = self.containers(key, Some(workload.release)).await?;
        let mut names = Vec::new();
        for index in 0..runtime.replicas.min.max(1) {
            let name = Self::replica_name(key, workload.release, index);
            match existing.iter().find(|(n, _, _)| *n == name) {
                Some((_, _, true)) => {}
                Some(_) => {
                    self.remove_container(&name).await?;
                    self.create_replica(workload, &name).await?;
                }
                None => self.create_replica(workload, &name).await?,
            }
            names.push(name);
        }
        let mut addrs = Vec::new();
        for name in &names {
            match self.wait_healthy(workload, name).await {
                Ok(addr) => addrs.extend(addr),
                Err(detail) => {
                    for name in &names {
                        self.remove_container(name).await.ok();
                    }
                    return Err(DeployError::Unhealthy {
                        release: workload.release,
                        waited_secs: self.config.health_timeout.as_secs(),
                        detail,
                    });
                }
            }
        }
        Ok(addrs)
    }

    async fn create_replica(&self, workload: &Workload, name: &str) -> Result<()> {
        let runtime = &workload.spec.runtime;
        let body = ContainerCreateBody {
            image: Some(workload.image.clone()),
            // Like Kubernetes `args`: replaces the image's CMD, keeps its ENTRYPOINT.
            cmd: runtime.cmd.clone(),
            env: Some(Self::environment(workload)),
            labels: Some(Self::labels(&workload.key, workload.release, "replica")),
            exposed_ports: runtime.ports.first().map(|p| vec![format!("{p}/tcp")]),
            host_config: Some(self.host_config(workload, true)),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DeployError::Docker(format!("creating replica {name}: {e}")))?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| DeployError::Docker(format!("starting replica {name}: {e}")))?;
        Ok(())
    }

    /// Polls the replica until its readiness probe passes: `Ok(addr)` (None without a port), or
    /// `Err(why)` when it exits or the health timeout passes.
    async fn wait_healthy(&self, workload: &Workload, name: &str) -> Result<Option<SocketAddr>, String> {
        let deadline = tokio::time::Instant::now() + self.config.health_timeout;
        let spec = &workload.spec;
        let probe = spec.health.readiness.as_ref();
        loop {
            let inspect = self
                .docker
                .inspect_container(name, None)
                .await
                .map_err(|e| format!("replica {name} vanished: {e}"))?;
            let state = inspect.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                let tail = self.log_tail(name).await;
                return Err(format!(
                    "replica {name} exited with code {}{tail}",
                    state.exit_code.unwrap_or_default()
                ));
            }
            let Some(&port) = spec.runtime.ports.first() else {
                return Ok(None);
            };
            let Some(addr) = self.published_addr(name).await.map_err(|e| e.to_string())? else {
                return Err(format!("replica {name} has no published port"));
            };
            let result = match probe {
                Some(p) if p.tcp_socket.is_some() => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("TCP connect to port {port}: {e}")),
                Some(p) => http_probe(addr, p.http_get.as_deref().unwrap_or("/"), p.timeout_seconds).await,
                None => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("TCP connect to port {port}: {e}")),
            };
            let last = match result {
                Ok(()) => return Ok(Some(addr)),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                let tail = self.log_tail(name).await;
                return Err(format!("readiness probe of {name} still failing: {last}{tail}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `; last log lines: …` from the container, or nothing.
    async fn log_tail(&self, name: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("5")
            .build();
        let mut lines = Vec::new();
        let mut logs = self.docker.logs(name, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            lines.push(String::from_utf8_lossy(&chunk.into_bytes()).trim_end().to_string());
        }
        if lines.is_empty() {
            String::new()
        } else {
            format!("; last log lines: {}", lines.join(" | "))
        }
    }

    fn require_binding(&self, key: &ServiceKey) -> Result<Binding> {
        self.junctions
            .binding(key)
            .ok_or_else(|| DeployError::NotFound(format!("{key} has nothing deployed on this Docker engine")))
    }

    fn require_canary(&self, key: &ServiceKey, release: i64) -> Result<Binding> {
        let binding = self.require_binding(key)?;
        match &binding.canary {
            Some((canary, _)) if canary.release == release => Ok(binding),
            _ => Err(DeployError::NotFound(format!(
                "release {release} is not the canary of {key}"
            ))),
        }
    }
}

/// One HTTP/1.0 GET: healthy on a 2xx or 3xx status.
async fn http_probe(addr: SocketAddr, path: &str, timeout_secs: Option<u32>) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(timeout_secs.unwrap_or(1)));
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: enclii-probe\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or("")))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} timed out after {} s", timeout.as_secs())))
}

#[async_trait]
impl Target for DockerTarget {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn deploy(&self, workload: &Workload, rollout: Rollout) -> Result<DeployOutcome> {
        workload.check_quota()?;
        self.junctions.check_routes(&workload.key, &workload.routes)?;
        let key = &workload.key;
        let _change = self.changes.lock().await;
        self.ensure_image(&workload.image).await?;
        let addrs = self.start_replicas(workload).await?;
        let replicas = addrs.len().max(workload.spec.runtime.replicas.min as usize) as u32;
        let backends = Backends {
            release: workload.release,
            addrs,
        };
        let stable = self.junctions.binding(key).and_then(|b| b.stable);
        let track = match rollout {
            Rollout::Canary { percent }
                if percent < 100 && stable.as_ref().is_some_and(|s| s.release != workload.release) =>
            {
                Track::Canary
            }
            _ => Track::Stable,
        };
        self.junctions.update(key, |binding| {
            let binding = binding.get_or_insert_with(Binding::default);
            binding.routes = workload.routes.clone();
            binding.paused = false;
            match (track, rollout) {
                (Track::Canary, Rollout::Canary { percent }) => binding.canary = Some((backends, percent)),
                _ => {
                    binding.stable = Some(backends);
                    binding.canary = None;
                }
            }
        });
        let volume_bytes = workload.spec.volumes.iter().filter_map(|v| v.size_bytes()).sum();
        self.volume_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), volume_bytes);
        // What runs now is the stable release and this one: an earlier canary it replaced goes.
        let keep: Vec<i64> = stable.iter().map(|s| s.release).chain([workload.release]).collect();
        let keep = if track == Track::Stable {
            &keep[keep.len() - 1..]
        } else {
            &keep[..]
        };
        self.remove_releases_except(key, keep).await?;
        self.save().await?;
        info!(service = %key, release = workload.release, ?track, replicas, "release deployed");
        Ok(DeployOutcome {
            replicas,
            url: workload.routes.first().map(|r| self.junctions.url(r)),
            track,
        })
    }

    async fn shift(&self, key: &ServiceKey, release: i64, percent: u8) -> Result<()> {
        let _change = self.changes.lock().await;
        self.require_canary(key, release)?;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding
                && let Some((_, share)) = &mut b.canary
            {
                *share = percent.min(100);
            }
        });
        self.save().await
    }

    async fn promote(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.require_binding(key)?;
        if binding.stable.as_ref().is_some_and(|s| s.release == release) && binding.canary.is_none() {
            return Ok(()); // promoted already (a retried job)
        }
        self.require_canary(key, release)?;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding {
                b.stable = b.canary.take().map(|(canary, _)| canary);
            }
        });
        self.remove_releases_except(key, &[release]).await?;
        self.save().await
    }

    async fn abort_canary(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.require_binding(key)?;
        if binding.canary.as_ref().is_some_and(|(c, _)| c.release == release) {
            self.junctions.update(key, |binding| {
                if let Some(b) = binding {
                    b.canary = None;
                }
            });
        }
        if binding.stable.as_ref().is_none_or(|s| s.release != release) {
            for (name, _, _) in self.containers(key, Some(release)).await? {
                self.remove_container(&name).await?;
            }
        }
        self.save().await
    }

    async fn release_metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> Result<ReleaseMetrics> {
        Ok(self.junctions.metrics(key, release, window))
    }

    async fn status(&self, key: &ServiceKey) -> Result<ServiceStatus> {
        let binding = self.junctions.binding(key).unwrap_or_default();
        let containers = self.containers(key, None).await?;
        let count = |release: i64| {
            let all = containers.iter().filter(|c| c.1 == release);
            (all.clone().count() as u32, all.filter(|c| c.2).count() as u32)
        };
        let canary_share = binding.canary.as_ref().map_or(0, |(_, p)| *p);
        let mut releases = Vec::new();
        if let Some(stable) = &binding.stable {
            let (replicas, healthy) = count(stable.release);
            releases.push(ReleaseStatus {
                release: stable.release,
                track: Track::Stable,
                percent: if binding.paused { 0 } else { 100 - canary_share },
                replicas,
                healthy,
            });
        }
        if let Some((canary, share)) = &binding.canary {
            let (replicas, healthy) = count(canary.release);
            releases.push(ReleaseStatus {
                release: canary.release,
                track: Track::Canary,
                percent: *share,
                replicas,
                healthy,
            });
        }
        Ok(ServiceStatus { releases })
    }

    async fn pause(&self, key: &ServiceKey) -> Result<()> {
        let _change = self.changes.lock().await;
        self.junctions.update(key, |binding| {
            if let Some(b) = binding {
                b.paused = true;
            }
        });
        for (name, _, running) in self.containers(key, None).await? {
            if running {
                let options = StopContainerOptionsBuilder::default().t(10).build();
                self.docker
                    .stop_container(&name, Some(options))
                    .await
                    .map_err(docker_error("stopping a replica"))?;
            }
        }
        self.save().await
    }

    async fn remove(&self, key: &ServiceKey, whole_environment: bool) -> Result<()> {
        let _change = self.changes.lock().await;
        let binding = self.junctions.binding(key);
        self.remove_releases_except(key, &[]).await?;
        self.junctions.update(key, |binding| *binding = None);
        let volumes = self.volume_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        if whole_environment && volumes.is_some() {
            let prefix = Self::volume_name(key, "");
            let list = self
                .docker
                .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
                .await
                .map_err(docker_error("listing volumes"))?;
            for volume in list.volumes.unwrap_or_default() {
                if volume.name.starts_with(&prefix) {
                    let options = RemoveVolumeOptionsBuilder::default().force(true).build();
                    if let Err(e) = self.docker.remove_volume(&volume.name, Some(options)).await
                        && !is_not_found(&e)
                    {
                        warn!(volume = %volume.name, error = %e, "volume not removed");
                    }
                }
            }
        }
        if let Some(binding) = binding {
            for release in binding.stable.iter().chain(binding.canary.iter().map(|(c, _)| c)) {
                self.junctions.forget(key, release.release);
            }
        }
        self.save().await
    }

    async fn run_job(&self, workload: &Workload, run: &JobRunSpec, log: UnboundedSender<String>) -> Result<i64> {
        self.ensure_image(&workload.image).await?;
        let key = &workload.key;
        let name = format!(
            "enclii-{}-{}-{}-job-{}-run{}-a{}",
            key.project, key.environment, key.service, run.job, run.run, run.attempt
        );
        self.remove_container(&name).await?;
        let body = ContainerCreateBody {
            image: Some(workload.image.clone()),
            cmd: Some(run.args.clone()),
            env: Some(Self::environment(workload)),
            labels: Some(Self::labels(key, workload.release, "job")),
            host_config: Some(self.host_config(workload, false)),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DeployError::Docker(format!("creating job container {name}: {e}")))?;
        // Removed on every path out, including a timeout or the pool aborting the job.
        let _cleanup = ContainerGuard {
            docker: self.docker.clone(),
            name: name.clone(),
        };
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| DeployError::Docker(format!("starting job container {name}: {e}")))?;
        let follow = async {
            let options = LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut logs = self.docker.logs(&name, Some(options));
            let mut partial = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let _ = log.send(line.trim_end().to_string());
                }
            }
            if !partial.is_empty() {
                let _ = log.send(partial);
            }
            let mut wait = self
                .docker
                .wait_container(&name, None::<bollard::query_parameters::WaitContainerOptions>);
            match wait.next().await {
                Some(Ok(status)) => Ok(status.status_code),
                // A non-zero exit arrives as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(DeployError::Docker(format!("waiting for {name}: {e}"))),
                None => Err(DeployError::Docker(format!("waiting for {name}: no status"))),
            }
        };
        match tokio::time::timeout(run.timeout, follow).await {
            Ok(code) => code,
            Err(_) => {
                let _ = log.send(format!(
                    "job `{}` did not finish within {} s and was stopped",
                    run.job,
                    run.timeout.as_secs()
                ));
                Ok(JOB_TIMEOUT_EXIT_CODE)
            }
        }
    }

    async fn usage(&self, key: &ServiceKey) -> Result<Usage> {
        let mut usage = Usage {
            volume_bytes: self
                .volume_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .copied()
                .unwrap_or(0),
            cpu_counter_ns: Some(0),
            egress_counter_bytes: Some(0),
            ..Usage::default()
        };
        for (name, _, running) in self.containers(key, None).await? {
            if !running {
                continue;
            }
            let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
            let Some(Ok(stats)) = self.docker.stats(&name, Some(options)).next().await else {
                continue;
            };
            usage.replicas += 1;
            let cpu = stats
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0);
            usage.cpu_counter_ns = usage.cpu_counter_ns.map(|n| n + cpu);
            usage.memory_bytes += stats.memory_stats.and_then(|m| m.usage).unwrap_or(0);
            let sent: u64 = stats
                .networks
                .unwrap_or_default()
                .values()
                .filter_map(|n| n.tx_bytes)
                .sum();
            usage.egress_counter_bytes = usage.egress_counter_bytes.map(|n| n + sent);
        }
        Ok(usage)
    }

    async fn logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        let mut streams = Vec::new();
        for (name, _, _) in self.containers(key, None).await? {
            let options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .follow(request.follow)
                .tail(&request.tail.to_string())
                .build();
            let replica = name.clone();
            let lines = self.docker.logs(&name, Some(options)).flat_map(move |chunk| {
                let lines: Vec<Result<RuntimeLogLine>> = match chunk {
                    Ok(output) => {
                        let (stream, bytes) = match output {
                            LogOutput::StdErr { message } => (LogStream::Stderr, message),
                            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                                (LogStream::Stdout, message)
                            }
                            LogOutput::StdIn { .. } => return futures::stream::iter(Vec::new()),
                        };
                        String::from_utf8_lossy(&bytes)
                            .lines()
                            .map(|raw| Ok(RuntimeLogLine::parse(&replica, stream, raw)))
                            .collect()
                    }
                    // A replica removed while it is read ends its part of the stream.
                    Err(e) if is_not_found(&e) => Vec::new(),
                    Err(e) => vec![Err(DeployError::Docker(format!("reading the log of {replica}: {e}")))],
                };
                futures::stream::iter(lines)
            });
            streams.push(lines.boxed());
        }
        Ok(futures::stream::select_all(streams).boxed())
    }
}

/// Removes a job container when the run ends, however it ends.
struct ContainerGuard {
    docker: Docker,
    name: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&name, Some(options)).await;
            });
        }
    }
}
