//! The Docker engine as the builder: BuildKit builds (driven through the Docker CLI, which speaks
//! BuildKit's session protocol to the engine — see ARCHITECTURE.md for why not bollard), pushes
//! and image inspection through bollard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{BuildConfig, JobLog, RegistryConfig, StepError, detect};

/// The registry reference an image is pushed as: the spec's image when it names a registry host,
/// otherwise the configured registry in front of it (`shop/api:sha` → `127.0.0.1:5000/shop/api:sha`).
pub fn image_reference(registry: &RegistryConfig, image: &str) -> String {
    if names_a_host(image) {
        image.to_string()
    } else {
        format!("{}/{image}", registry.host)
    }
}

fn names_a_host(image: &str) -> bool {
    let first = image.split('/').next().unwrap_or("");
    image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost")
}

/// The registry host of a reference (`docker.io` when it names none).
pub fn registry_host(reference: &str) -> &str {
    if names_a_host(reference) {
        reference.split('/').next().unwrap_or("")
    } else {
        "docker.io"
    }
}

pub fn connect(config: &BuildConfig) -> Result<Docker, StepError> {
    connect_host(&config.docker_host)
}

fn connect_host(docker_host: &str) -> Result<Docker, StepError> {
    let socket = docker_host.strip_prefix("unix://").unwrap_or(docker_host);
    Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
        .map_err(|e| StepError::transient(format!("Docker engine at {docker_host} unreachable: {e}")))
}

/// The engine's version, when an engine answers at `docker_host` within a few seconds.
pub async fn engine_version(docker_host: &str) -> Result<String, StepError> {
    let socket = docker_host.strip_prefix("unix://").unwrap_or(docker_host);
    let docker = Docker::connect_with_unix(socket, 5, bollard::API_DEFAULT_VERSION)
        .map_err(|e| StepError::transient(e.to_string()))?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), docker.version()).await {
        Ok(Ok(version)) => Ok(version.version.unwrap_or_else(|| "unknown".into())),
        Ok(Err(e)) => Err(StepError::transient(e.to_string())),
        Err(_) => Err(StepError::transient("no answer within 5 s")),
    }
}

/// `docker-buildkit <engine version>`, the builder named in a release's provenance.
pub async fn builder_name(docker: &Docker) -> Result<String, StepError> {
    let version = docker
        .version()
        .await
        .map_err(|e| StepError::transient(format!("Docker engine unreachable: {e}; is dockerd running?")))?;
    Ok(format!(
        "docker-buildkit {}",
        version.version.unwrap_or_else(|| "unknown".into())
    ))
}

pub struct BuildRequest<'a> {
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    pub tag: &'a str,
    pub args: &'a std::collections::BTreeMap<String, String>,
    /// Secret id → file holding its value (mode 0600, inside the job workspace).
    pub secrets: &'a [(String, PathBuf)],
    pub labels: Vec<(String, String)>,
    pub iidfile: &'a Path,
    /// For naming the failing line: the repository-relative Dockerfile path and its text.
    pub dockerfile_name: &'a str,
    pub dockerfile_text: &'a str,
}

/// Runs one BuildKit build, streaming its log line by line. The CLI is killed when the build is
/// cancelled, times out or this future is dropped; the engine then cancels the build's solve, so
/// the work stops on the builder too.
pub async fn build(
    config: &BuildConfig,
    timeout: std::time::Duration,
    req: &BuildRequest<'_>,
    log: &JobLog,
    cancel: &CancellationToken,
) -> Result<String, StepError> {
    let mut command = tokio::process::Command::new(&config.docker_cli);
    command
        .env("DOCKER_BUILDKIT", "1")
        .env("DOCKER_HOST", &config.docker_host)
        .env("BUILDKIT_PROGRESS", "plain")
        .arg("build")
        .arg("--progress=plain")
        .arg("--file")
        .arg(req.dockerfile)
        .arg("--tag")
        .arg(req.tag)
        .arg("--iidfile")
        .arg(req.iidfile);
    for (key, value) in req.args {
        command.arg("--build-arg").arg(format!("{key}={value}"));
    }
    for (id, path) in req.secrets {
        command.arg("--secret").arg(format!("id={id},src={}", path.display()));
    }
    for (key, value) in &req.labels {
        command.arg("--label").arg(format!("{key}={value}"));
    }
    command
        .arg(req.context)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        StepError::fatal(format!(
            "build failed: cannot run the Docker CLI `{}`: {e}; install docker.io or set ENCLII_DOCKER_CLI",
            config.docker_cli.display()
        ))
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<String>::new()));
    let pump = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let log = log.clone();
        let tail = tail.clone();
        async move {
            // Bytes, not `lines()`: output that is not UTF-8 must not stop the pump (a full pipe
            // would then block the build).
            let mut reader = BufReader::new(stream);
            let mut raw = Vec::new();
            while reader.read_until(b'\n', &mut raw).await.is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']).to_string();
                raw.clear();
                log.line(&line);
                let mut tail = tail.lock().expect("log tail");
                if tail.len() == 400 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    };
    let output = futures::future::join(pump(Box::new(stdout)), pump(Box::new(stderr)));
    let ended = tokio::select! {
        (_, _) = output => child.wait().await.map_err(|e| StepError::transient(format!("build: waiting for the Docker CLI: {e}")))?,
        _ = tokio::time::sleep(timeout) => {
            let _ = child.kill().await;
            log.line(format!("build timed out after {timeout:?}; stopped on the builder"));
            return Err(StepError::fatal(format!(
                "build timed out after {}s; make the build faster (cache dependencies in an earlier layer) or ask the operator to raise ENCLII_BUILD_TIMEOUT_SECONDS",
                timeout.as_secs()
            )));
        }
        _ = cancel.cancelled() => {
            let _ = child.kill().await;
            log.line("build cancelled; stopped on the builder");
            return Err(StepError::fatal("build cancelled"));
        }
    };
    if ended.success() {
        let id = std::fs::read_to_string(req.iidfile).unwrap_or_default();
        return Ok(id.trim().to_string());
    }
    let tail: Vec<String> = tail.lock().expect("log tail").iter().cloned().collect();
    if let Some(sign) = engine_went_away(&tail) {
        return Err(StepError::transient(format!(
            "build: the Docker engine stopped answering during the build ({sign}); retrying"
        )));
    }
    Err(StepError::fatal(explain_failure(
        req.dockerfile_name,
        req.dockerfile_text,
        &tail,
    )))
}

/// The line of a failed build's log saying the engine itself failed — it stopped or restarted
/// during the build — rather than the Dockerfile: worth a retry, not the release's failure.
fn engine_went_away(tail: &[String]) -> Option<&str> {
    const SIGNS: [&str; 5] = [
        "cannot connect to the docker daemon",
        "error during connect",
        "rpc error: code = unavailable",
        "/var/run/docker.sock",
        // The CLI's ending when the engine stopped as the build finished.
        "server did not provide an image id",
    ];
    tail.iter()
        .rev()
        .find(|line| {
            let line = line.to_ascii_lowercase();
            SIGNS.iter().any(|sign| line.contains(sign))
        })
        .map(String::as_str)
}

/// `build failed at Dockerfile:7: RUN make: exit code: 2` from the end of BuildKit's plain log.
fn explain_failure(dockerfile_name: &str, dockerfile_text: &str, tail: &[String]) -> String {
    // Plain progress ends a failed build with `------`, ` > [3/4] RUN make:`, the step's last
    // output, `------`, and the error; Dockerfile syntax errors name their line themselves.
    let error = tail
        .iter()
        .rev()
        .find(|l| {
            l.starts_with("error:")
                || l.starts_with("ERROR:")
                || l.contains("failed to solve")
                || l.contains("executor failed")
        })
        .cloned()
        .or_else(|| tail.last().cloned())
        .unwrap_or_else(|| "the builder gave no output".into());
    let error = error
        .trim_start_matches("error: ")
        .trim_start_matches("ERROR: ")
        .trim_start_matches("failed to solve: ")
        .trim_start_matches("failed to solve with frontend dockerfile.v0: ")
        .to_string();
    let vertex = tail.iter().rev().find_map(|l| {
        l.trim()
            .strip_prefix("> ")
            .and_then(|v| v.strip_suffix(':'))
            .map(str::to_string)
    });
    if let Some(vertex) = &vertex
        && let Some(line) = detect::instruction_line(dockerfile_text, vertex)
    {
        let instruction = vertex.split_once(']').map_or(vertex.as_str(), |(_, i)| i.trim());
        return format!("build failed at {dockerfile_name}:{line}: `{instruction}`: {error}");
    }
    if let Some(at) = error.find("line ") {
        let digits: String = error[at + 5..].chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            return format!("build failed at {dockerfile_name}:{digits}: {error}");
        }
    }
    format!("build failed: {error}")
}

/// Gives the image tagged `local` the tag `reference` (moving it from any other image).
pub async fn retag(docker: &Docker, local: &str, reference: &str) -> Result<(), StepError> {
    let (repo, tag) = split_tag(reference);
    let options = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(repo)
        .tag(tag)
        .build();
    docker.tag_image(local, Some(options)).await.map_err(|e| match e {
        // Only the engine saying "no such image" means the build ran elsewhere; an engine that
        // is restarting or unreachable answers nothing, and the push is worth another attempt.
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => StepError::fatal(format!(
            "push failed: the built image {local} is not on this builder ({e}); build and push must run on workers sharing one Docker engine — retry the pipeline"
        )),
        e => StepError::transient(format!(
            "push failed: the Docker engine did not answer while tagging {local} ({e}); the push is retried"
        )),
    })
}

/// Pushes `reference` with the registry's credentials; returns its digest (`sha256:…`).
pub async fn push(
    docker: &Docker,
    registry: &RegistryConfig,
    reference: &str,
    log: &JobLog,
) -> Result<String, StepError> {
    let (name, tag) = split_tag(reference);
    // Our credentials go to our registry only, never to a host a spec named.
    let ours = registry.serves(reference);
    let credentials = registry
        .username
        .as_ref()
        .filter(|_| ours)
        .map(|username| DockerCredentials {
            username: Some(username.clone()),
            password: registry.password.as_ref().map(|p| p.expose().to_string()),
            serveraddress: Some(registry.host.clone()),
            ..Default::default()
        });
    let options = bollard::query_parameters::PushImageOptionsBuilder::default()
        .tag(tag)
        .build();
    let mut stream = docker.push_image(name, Some(options), credentials);
    let mut last_status = HashMap::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(StepError::transient(format!("push of {reference} failed: {error}")));
                }
                if let Some(status) = info.status {
                    // One line per layer state change, not per progress tick.
                    if last_status.insert(status.clone(), ()).is_none() {
                        log.line(status);
                    }
                }
            }
            Err(e) => {
                return Err(StepError::transient(format!(
                    "push of {reference} failed: {e}; check that the registry {} is up and the credentials (ENCLII_REGISTRY_*) are right",
                    registry.host
                )));
            }
        }
    }
    let inspect = docker
        .inspect_image(reference)
        .await
        .map_err(|e| StepError::transient(format!("push: cannot inspect {reference} after pushing: {e}")))?;
    inspect
        .repo_digests
        .unwrap_or_default()
        .iter()
        .find(|d| d.starts_with(&format!("{name}@")))
        .and_then(|d| d.split_once('@').map(|(_, digest)| digest.to_string()))
        .ok_or_else(|| StepError::transient(format!("push of {reference} reported no digest; retrying")))
}

pub use enclii_domain::image::{image_name, split_tag};

/// Reads files out of an image (without running it): `paths` that do not exist are skipped.
pub async fn read_image_files(
    docker: &Docker,
    image: &str,
    paths: &[&str],
) -> Result<HashMap<String, Vec<u8>>, StepError> {
    use bollard::models::ContainerCreateBody;
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(vec!["enclii-inventory".into()]),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| StepError::transient(format!("sbom: cannot open image {image} on the engine: {e}")))?;
    let mut files = HashMap::new();
    for path in paths {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut bytes = Vec::new();
        let mut stream = docker.download_from_container(&created.id, Some(options));
        let mut found = true;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                // Absent from this image: nothing to inventory there.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    found = false;
                    break;
                }
                // Anything else would make a silently incomplete SBOM: fail (and retry) instead.
                Err(e) => {
                    let _ = docker
                        .remove_container(
                            &created.id,
                            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                        )
                        .await;
                    return Err(StepError::transient(format!("sbom: reading {path} from {image}: {e}")));
                }
            }
        }
        if !found {
            continue;
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        if let Ok(entries) = archive.entries() {
            for mut entry in entries.flatten() {
                let mut content = Vec::new();
                if std::io::Read::read_to_end(&mut entry, &mut content).is_ok() && entry.header().entry_type().is_file()
                {
                    files.insert(path.to_string(), content);
                    break;
                }
            }
        }
    }
    let _ = docker
        .remove_container(
            &created.id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::engine_went_away;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    /// The endings chaos's engine restart gave a build (issue 14) are the engine's; a failing
    /// `RUN` is the Dockerfile's, even when its output talks about connections.
    #[test]
    fn an_engine_that_went_away_is_told_from_a_failing_dockerfile() {
        let cli = lines(&[
            "#5 [2/3] COPY www /www",
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
        ]);
        assert!(engine_went_away(&cli).is_some());
        let grpc = lines(&[
            "ERROR: failed to dial gRPC: cannot connect to the Docker daemon. Is 'docker daemon' running on this host?: dial unix /var/run/docker.sock: connect: no such file or directory",
        ]);
        assert!(engine_went_away(&grpc).is_some());
        let no_image =
            lines(&["ERROR: cannot write /tmp/w/job-309-1/image.id because server did not provide an image ID"]);
        assert!(engine_went_away(&no_image).is_some());
        let dockerfile = lines(&[
            "#6 [3/3] RUN curl https://example.test",
            "#6 0.2 curl: (7) Failed to connect: connection refused",
            "ERROR: failed to solve: process \"/bin/sh -c curl https://example.test\" did not complete successfully: exit code: 7",
        ]);
        assert_eq!(engine_went_away(&dockerfile), None);
    }
}
