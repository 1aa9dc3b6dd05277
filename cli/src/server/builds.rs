//! What a server process does about builds (issue 15): on one node with nothing but a Docker
//! engine it builds, pushing to the registry it serves itself from the data directory and keeping
//! artefacts in the data directory; `ENCLII_REGISTRY` and `ENCLII_S3_BUCKET` replace either for
//! several hosts. When it cannot build, it says why — in its startup summary and in its worker
//! heartbeats, from which a waiting release explains itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use enclii_build::{BuildConfig, RegistryConfig};
use enclii_domain::jobs;
use enclii_queue::JobKind;
use enclii_signing::Secret;

use super::files;
use crate::build::BuildArgs;

/// The user the embedded registry's generated credentials are for.
const REGISTRY_USER: &str = "enclii";

/// The job kinds of the build steps.
pub fn build_kinds() -> [&'static str; 5] {
    [
        jobs::Clone::KIND,
        jobs::Build::KIND,
        jobs::Push::KIND,
        jobs::Sbom::KIND,
        jobs::Sign::KIND,
    ]
}

/// The registry this host serves from its data directory, ready to be served.
pub struct EmbeddedRegistry {
    pub listener: tokio::net::TcpListener,
    pub registry: enclii_registry::Registry,
    /// `127.0.0.1:<port>`: how images in it are named.
    pub host: String,
}

/// This process's build setup.
pub struct BuildPlan {
    /// Set when this process runs the build steps.
    pub config: Option<BuildConfig>,
    /// The registry images go to (external or embedded), whether or not this process builds:
    /// the deploy target pulls from it and the deploy policy verifies signatures in it.
    pub registry: RegistryConfig,
    /// Set when this process serves the embedded registry.
    pub embedded: Option<EmbeddedRegistry>,
    /// Why this process does not build (for the summary and the heartbeats).
    pub off: Option<String>,
    /// Lines for the startup summary.
    pub summary: Vec<(&'static str, String)>,
}

impl BuildPlan {
    /// The build kinds this process cannot run, each with the reason.
    pub fn unavailable(&self) -> BTreeMap<String, String> {
        let Some(reason) = &self.off else {
            return BTreeMap::new();
        };
        build_kinds()
            .into_iter()
            .map(|kind| (kind.to_string(), reason.clone()))
            .collect()
    }
}

/// Decides the build setup. The embedded registry is served by the process that runs the API
/// (one per host); a worker-only process on the same host uses it through the shared data
/// directory's credentials.
/// `api_on_loopback`: the API is reachable from this host only (local repositories may be cloned
/// unless `ENCLII_GIT_SCHEMES` says otherwise).
pub async fn plan(
    args: &BuildArgs,
    data_dir: &Path,
    serves_api: bool,
    runs_worker: bool,
    api_on_loopback: bool,
) -> anyhow::Result<BuildPlan> {
    let mut summary = Vec::new();
    let (registry, embedded) = match args.external_registry() {
        Some(registry) => {
            summary.push(("registry", format!("{} (ENCLII_REGISTRY)", registry.host)));
            (registry, None)
        }
        None => {
            let password = registry_password(data_dir)?;
            let (host, embedded) = if serves_api {
                let served = serve_registry(args.registry_listen(), data_dir, &password).await?;
                (served.host.clone(), Some(served))
            } else {
                (loopback_host(args.registry_listen()), None)
            };
            summary.push((
                "registry",
                format!(
                    "embedded at {host} (images in {}; user {REGISTRY_USER}, password in {}; set ENCLII_REGISTRY for several hosts)",
                    data_dir.join("registry").display(),
                    data_dir.join("registry.password").display()
                ),
            ));
            let registry = RegistryConfig {
                host,
                insecure: true,
                username: Some(REGISTRY_USER.into()),
                password: Some(Secret::new(password)),
            };
            (registry, embedded)
        }
    };
    let artefacts = args.artefacts(data_dir);
    let hint = match artefacts {
        enclii_build::ArtefactConfig::Directory(_) => " (set ENCLII_S3_BUCKET for several hosts)",
        enclii_build::ArtefactConfig::S3(_) => "",
    };
    summary.push(("artefacts", format!("{}{hint}", artefacts.describe())));
    let off = match runs_worker {
        false => Some("this process runs no worker (--role)".to_string()),
        true => args.cannot_build().await,
    };
    let config = match &off {
        None => Some(args.config(data_dir, registry.clone(), api_on_loopback)?),
        Some(_) => None,
    };
    if runs_worker {
        summary.push((
            "builds",
            match &off {
                None => format!(
                    "on (BuildKit on the Docker engine at {}; clones {})",
                    args.docker_host(),
                    args.git_schemes(api_on_loopback).join(", ")
                ),
                Some(reason) => format!("off: {reason}"),
            },
        ));
    }
    Ok(BuildPlan {
        config,
        registry,
        embedded,
        off,
        summary,
    })
}

/// `127.0.0.1:<port>` for a registry listening on every address: the Docker engine on this host
/// reaches it on loopback, which it speaks plain HTTP to without being told.
fn loopback_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// The embedded registry's password: generated once into `<data-dir>/registry.password` (0600).
fn registry_password(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("registry.password");
    match std::fs::read_to_string(&path) {
        Ok(password) if !password.trim().is_empty() => return Ok(password.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let password: String = {
        use rand::Rng;
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect()
    };
    match files::write_private(&path, &password) {
        Ok(()) => Ok(password),
        // Another process of this host wrote it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => registry_password(data_dir),
        Err(e) => Err(e).with_context(|| format!("cannot write the registry password to {}", path.display())),
    }
}

async fn serve_registry(listen: SocketAddr, data_dir: &Path, password: &str) -> anyhow::Result<EmbeddedRegistry> {
    let root = data_dir.join("registry");
    let registry = enclii_registry::Registry::open(
        root.clone(),
        enclii_registry::Credentials {
            username: REGISTRY_USER.into(),
            password: password.to_string(),
        },
    )
    .with_context(|| format!("cannot open the embedded registry in {}", root.display()))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!(
            "the embedded registry cannot listen on {listen} (is another process using it? set ENCLII_REGISTRY_LISTEN, or ENCLII_REGISTRY to use another registry)"
        )
    })?;
    let host = loopback_host(listener.local_addr()?);
    Ok(EmbeddedRegistry {
        listener,
        registry,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_on_every_address_is_reached_on_loopback() {
        assert_eq!(loopback_host("0.0.0.0:8082".parse().unwrap()), "127.0.0.1:8082");
        assert_eq!(loopback_host("127.0.0.1:5000".parse().unwrap()), "127.0.0.1:5000");
        assert_eq!(loopback_host("[::]:8082".parse().unwrap()), "127.0.0.1:8082");
    }
}
