//! What the build workers need to know: where to work, which builder, registry, artefact store
//! and signing key to use, and the limits of a build.

use std::path::PathBuf;
use std::time::Duration;

use enclii_signing::{RegistryAuth, Secret, SigningKey};

/// The OCI registry images are pushed to.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// `host[:port]`, e.g. `registry.example.com` or `127.0.0.1:5000`.
    pub host: String,
    /// Plain HTTP (a registry on loopback or a private network).
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RegistryConfig {
    /// Whether `image` lives in this registry (its host is ours).
    pub fn serves(&self, image: &str) -> bool {
        crate::docker::registry_host(image).eq_ignore_ascii_case(&self.host)
    }

    /// How to reach `image`'s registry: ours with its settings and credentials; any other host
    /// (a spec may name one) over HTTPS without them, so our credentials never leave for it.
    pub fn auth_for(&self, image: &str) -> RegistryAuth {
        if !self.serves(image) {
            return RegistryAuth::default();
        }
        RegistryAuth {
            insecure: self.insecure,
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

/// Not `Debug`: it holds the signing key.
#[derive(Clone)]
pub struct BuildConfig {
    /// Parent of the per-job workspaces.
    pub workspace_root: PathBuf,
    /// URL schemes `clone` may fetch from (`https`, `http`, `git`, `file`).
    pub allowed_git_schemes: Vec<String>,
    /// Token for private repositories when the project has no `GIT_TOKEN` secret; sent only to
    /// the hosts in `git_token_hosts`.
    pub git_token: Option<Secret>,
    pub git_token_hosts: Vec<String>,
    /// How long a clone may take.
    pub clone_timeout: Duration,
    /// The Docker CLI that drives BuildKit on the engine (a 20.10 CLI or one with buildx).
    pub docker_cli: PathBuf,
    /// The engine's socket (`unix:///var/run/docker.sock`).
    pub docker_host: String,
    /// How long one build may run; on expiry it is stopped on the builder.
    pub build_timeout: Duration,
    /// CPU and memory limits of the builds' `RUN` steps, set on the builder's BuildKit cgroup
    /// (see `limits.rs`): they bound the builds running on one builder together.
    pub build_cpus: Option<f64>,
    pub build_memory_bytes: Option<u64>,
    pub registry: RegistryConfig,
    /// Where source archives, logs and SBOMs are kept.
    pub artefacts: enclii_artefacts::ArtefactConfig,
    /// How long archived logs and source archives are kept (SBOMs stay with their releases).
    pub artefact_retention: Duration,
    /// Signs images unless the project has its own `COSIGN_PRIVATE_KEY` secret.
    pub signing_key: SigningKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_credentials_go_to_our_registry_only() {
        let registry = RegistryConfig {
            host: "registry.example:5000".into(),
            insecure: true,
            username: Some("ci".into()),
            password: Some(Secret::new("hunter2")),
        };
        let ours = registry.auth_for("registry.example:5000/shop/api@sha256:00");
        assert!(ours.insecure && ours.username.as_deref() == Some("ci") && ours.password.is_some());
        for foreign in ["evil.example/shop/api:1", "shop/api:1", "docker.io/library/busybox"] {
            let auth = registry.auth_for(foreign);
            assert!(
                auth.username.is_none() && auth.password.is_none() && !auth.insecure,
                "{foreign}"
            );
        }
    }
}
