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
    pub fn auth(&self) -> RegistryAuth {
        RegistryAuth {
            insecure: self.insecure,
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

/// The S3-compatible store for source archives, logs and SBOMs.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http://127.0.0.1:8014`; `None` uses AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Secret,
}

/// Not `Debug`: it holds the signing key.
#[derive(Clone)]
pub struct BuildConfig {
    /// Parent of the per-job workspaces.
    pub workspace_root: PathBuf,
    /// URL schemes `clone` may fetch from (`https`, `http`, `git`, `file`).
    pub allowed_git_schemes: Vec<String>,
    /// Token for private repositories when the project has no `GIT_TOKEN` secret.
    pub git_token: Option<Secret>,
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
    pub s3: S3Config,
    /// Signs images unless the project has its own `COSIGN_PRIVATE_KEY` secret.
    pub signing_key: SigningKey,
}
