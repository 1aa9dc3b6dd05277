//! A release's replicas: their containers (name, environment, limits, volumes, published port)
//! and the readiness probe run from the host against the published port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, PortBinding, RestartPolicy,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{ServiceKey, Workload};
use enclii_domain::spec::Probe;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{DockerTarget, LABEL_OWNER, is_not_found};

/// Why a replica did not become ready.
pub(crate) enum Unready {
    /// The release's fault (it exited, or its probe kept failing): permanent, what ran is removed.
    Unhealthy(String),
    /// The engine's (unreachable, the replica removed under the deploy): worth a retry.
    Engine(DeployError),
}

impl DockerTarget {
    /// `enclii-<project>-<environment>-<service>-r<release>-g<generation>-<index>`: the
    /// generation changes with what the replica runs with besides its image — environment
    /// (secrets included), command, limits, volumes — so a deploy of the same release with a new
    /// secret or spec starts new replicas (and removes the others once they serve), while a
    /// retried deploy finds its own.
    pub(crate) fn replica_name(workload: &Workload, index: u32) -> String {
        let key = &workload.key;
        format!(
            "enclii-{}-{}-{}-r{}-g{}-{index}",
            key.project,
            key.environment,
            key.service,
            workload.release,
            Self::generation(workload)
        )
    }

    /// A short digest of everything a replica runs with but its image (which the release fixes).
    pub(crate) fn generation(workload: &Workload) -> String {
        use sha2::{Digest, Sha256};
        let runtime = &workload.spec.runtime;
        let mut env = Self::environment(workload);
        env.sort();
        let mut hash = Sha256::new();
        for part in env
            .iter()
            .map(String::as_str)
            .chain(runtime.cmd.iter().flatten().map(String::as_str))
        {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.update(format!("{:?}/{:?}", runtime.cpu_millis(), runtime.memory_bytes()).as_bytes());
        for volume in &workload.spec.volumes {
            hash.update(format!("{}={}", volume.name, volume.mount_path).as_bytes());
        }
        hash.finalize()[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn environment(workload: &Workload) -> Vec<String> {
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

    pub(crate) fn volume_name(key: &ServiceKey, volume: &str) -> String {
        format!("enclii-{}-{}-{}-{volume}", key.project, key.environment, key.service)
    }

    pub(crate) fn host_config(&self, workload: &Workload, publish: bool, network: &str) -> HostConfig {
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
            network_mode: Some(network.to_string()),
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
                        // Labelled when the mount creates it, so a removal finds it by its service.
                        volume_options: Some(MountVolumeOptions {
                            labels: Some(
                                Self::service_labels(&workload.key)
                                    .into_iter()
                                    .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                                    .collect(),
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// Starts (or finds running) the release's replicas and waits until every one is healthy;
    /// on failure removes them and says why, with the end of the replica's log.
    pub(crate) async fn start_replicas(&self, workload: &Workload) -> Result<Vec<SocketAddr>> {
        let key = &workload.key;
        let runtime = &workload.spec.runtime;
        let existing = self.containers(key, Some(workload.release)).await?;
        let mut names = Vec::new();
        for index in 0..runtime.replicas.min.max(1) {
            let name = Self::replica_name(workload, index);
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
                Err(Unready::Unhealthy(detail)) => {
                    for name in &names {
                        self.remove_container(name).await.ok();
                    }
                    return Err(DeployError::Unhealthy {
                        release: workload.release,
                        waited_secs: self.config.health_timeout.as_secs(),
                        detail,
                    });
                }
                // The engine, not the release, failed: a retry finds what runs and waits again;
                // if none comes, the sweep (`watch.rs`) removes what no binding owns.
                Err(Unready::Engine(e)) => return Err(e),
            }
        }
        Ok(addrs)
    }

    /// Removes the release's replicas this deploy does not run: beyond the spec's count (its
    /// `replicas.min` was lowered) or of an earlier generation (a new secret or spec); the router
    /// no longer sends them anything (the binding lists this deploy's replicas only).
    pub(crate) async fn remove_extra_replicas(&self, workload: &Workload) -> Result<()> {
        let wanted: Vec<String> = (0..workload.spec.runtime.replicas.min.max(1))
            .map(|index| Self::replica_name(workload, index))
            .collect();
        for (name, _, _) in self.containers(&workload.key, Some(workload.release)).await? {
            if !wanted.contains(&name) {
                self.remove_container(&name).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn create_replica(&self, workload: &Workload, name: &str) -> Result<()> {
        let runtime = &workload.spec.runtime;
        let network = self.ensure_network(&workload.key).await?;
        let body = ContainerCreateBody {
            image: Some(workload.image.clone()),
            // Like Kubernetes `args`: replaces the image's CMD, keeps its ENTRYPOINT.
            cmd: runtime.cmd.clone(),
            env: Some(Self::environment(workload)),
            labels: Some({
                let mut labels = Self::labels(&workload.key, workload.release, "replica");
                labels.insert(LABEL_OWNER.to_string(), self.owner());
                labels
            }),
            exposed_ports: runtime.ports.first().map(|p| vec![format!("{p}/tcp")]),
            host_config: Some(self.host_config(workload, true, &network)),
            networking_config: Some(Self::network_endpoint(&network, Some(&workload.key.service))),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DeployError::docker(format!("creating replica {name}: {e}"), e))?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| DeployError::docker(format!("starting replica {name}: {e}"), e))?;
        Ok(())
    }

    /// Polls the replica until its readiness probe passes: `Ok(addr)` (None without a port), or
    /// why not: the replica exited or stayed unready past the health timeout, or the engine
    /// stopped answering (then it is the engine's failure, not the release's).
    ///
    /// A replica stopped by SIGTERM or SIGKILL (exit 143/137, not OOM) was stopped from outside —
    /// usually by an engine shutting down, which restarts it by its restart policy when it comes
    /// back — so it is waited for rather than judged; so is any stopped replica once the engine
    /// has been seen down during the wait.
    pub(crate) async fn wait_healthy(&self, workload: &Workload, name: &str) -> Result<Option<SocketAddr>, Unready> {
        let deadline = tokio::time::Instant::now() + self.config.health_timeout;
        let spec = &workload.spec;
        let probe = spec.health.readiness.as_ref();
        let mut engine_down: Option<String> = None;
        let mut last = String::from("not probed yet");
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(match engine_down {
                    Some(why) => Unready::Engine(DeployError::docker_message(format!(
                        "the engine stopped answering while {name} started ({why}); retrying"
                    ))),
                    None => {
                        let tail = self.log_tail(name).await;
                        Unready::Unhealthy(format!("readiness probe of {name} still failing: {last}{tail}"))
                    }
                });
            }
            let inspect = match self.docker.inspect_container(name, None).await {
                Ok(inspect) => inspect,
                Err(e) if is_not_found(&e) => {
                    return Err(Unready::Engine(DeployError::docker(
                        format!("replica {name} was removed from the engine while it started; retrying"),
                        e,
                    )));
                }
                Err(e) => {
                    last = format!("engine unreachable: {e}");
                    engine_down = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let state = inspect.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                let code = state.exit_code.unwrap_or_default();
                let stopped_from_outside = matches!(code, 137 | 143) && state.oom_killed != Some(true);
                if engine_down.is_none() && !stopped_from_outside {
                    let tail = self.log_tail(name).await;
                    return Err(Unready::Unhealthy(format!(
                        "replica {name} exited with code {code}{tail}"
                    )));
                }
                last = format!("replica {name} stopped (exit code {code}), waiting for it to start again");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let Some(&port) = spec.runtime.ports.first() else {
                return Ok(None);
            };
            let addr = match self.published_addr(name).await {
                Ok(Some(addr)) => addr,
                Ok(None) => return Err(Unready::Unhealthy(format!("replica {name} has no published port"))),
                Err(e) => {
                    last = e.to_string();
                    engine_down = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match check(addr, probe, port).await {
                Ok(()) => return Ok(Some(addr)),
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `; last log lines: …` from the container, or nothing.
    pub(crate) async fn log_tail(&self, name: &str) -> String {
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
}

/// One check of a replica at its published `addr` (its container `port`): the probe's HTTP GET,
/// or a TCP connect for a TCP probe or none.
pub(crate) async fn check(addr: SocketAddr, probe: Option<&Probe>, port: u32) -> Result<(), String> {
    match probe {
        Some(p) if p.tcp_socket.is_none() => {
            http_probe(addr, p.http_get.as_deref().unwrap_or("/"), p.timeout_seconds).await
        }
        _ => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("TCP connect to port {port}: {e}")),
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
