//! The build workers' settings (`ENCLII_REGISTRY`, `ENCLII_S3_*`, …) and `enclii verify`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use enclii_build::{ArtefactConfig, BuildConfig, RegistryConfig, S3Config};
use enclii_signing::{RegistryAuth, Secret, SigningError, SigningKey, VerifyingKey};

/// Whether this process runs the build steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuildSteps {
    /// When a Docker engine answers on the Docker host.
    Auto,
    /// Never: build jobs wait for another worker (their releases say so).
    Off,
}

/// Settings of the build steps (`clone`, `build`, `push`, `sbom`, `sign`). A worker runs them when
/// a Docker engine answers; images go to `ENCLII_REGISTRY`, or without it to the registry the
/// server embeds; artefacts go to `ENCLII_S3_BUCKET`, or without it to the data directory.
#[derive(Args, Debug)]
pub struct BuildArgs {
    #[arg(long = "build-steps", env = "ENCLII_BUILD_STEPS", value_enum, default_value = "auto")]
    build_steps: BuildSteps,
    /// The OCI registry images are pushed to (`host[:port]`). Without it the server serves its
    /// own from `<data-dir>/registry` on `--registry-listen`.
    #[arg(long = "registry", env = "ENCLII_REGISTRY")]
    registry: Option<String>,
    /// Where the embedded registry listens when no `ENCLII_REGISTRY` is set (keep it on loopback:
    /// the Docker engine on this host pushes and pulls there over plain HTTP).
    #[arg(
        long = "registry-listen",
        env = "ENCLII_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    registry_listen: std::net::SocketAddr,
    /// Speak plain HTTP to the registry (a registry on loopback or a private network).
    #[arg(long = "registry-insecure", env = "ENCLII_REGISTRY_INSECURE")]
    registry_insecure: bool,
    #[arg(long = "registry-username", env = "ENCLII_REGISTRY_USERNAME")]
    registry_username: Option<String>,
    #[arg(long = "registry-password", env = "ENCLII_REGISTRY_PASSWORD", hide_env_values = true)]
    registry_password: Option<String>,
    /// S3-compatible endpoint for source archives, logs and SBOMs (`http://127.0.0.1:8014`);
    /// without it, AWS's endpoint for the region.
    #[arg(long = "s3-endpoint", env = "ENCLII_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long = "s3-region", env = "ENCLII_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// The bucket (created when missing). Without it artefacts are kept in `<data-dir>/artefacts`
    /// (one node).
    #[arg(long = "s3-bucket", env = "ENCLII_S3_BUCKET")]
    s3_bucket: Option<String>,
    #[arg(long = "s3-access-key", env = "ENCLII_S3_ACCESS_KEY", default_value = "")]
    s3_access_key: String,
    #[arg(
        long = "s3-secret-key",
        env = "ENCLII_S3_SECRET_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    s3_secret_key: String,
    /// URL schemes `clone` may fetch from, comma-separated. Default: `https`, and `file` too when
    /// the API listens on loopback only (everyone who can ask for a build is on this host, and
    /// `enclii init` in a checkout without a remote names it `file://…`).
    #[arg(long = "git-schemes", env = "ENCLII_GIT_SCHEMES", value_delimiter = ',')]
    git_schemes: Option<Vec<String>>,
    /// Token for private repositories (projects can set their own secret `GIT_TOKEN`).
    #[arg(long = "git-token", env = "ENCLII_GIT_TOKEN", hide_env_values = true)]
    git_token: Option<String>,
    /// Hosts the platform's git token is sent to (never to others a spec names), comma-separated.
    #[arg(
        long = "git-token-hosts",
        env = "ENCLII_GIT_TOKEN_HOSTS",
        value_delimiter = ',',
        default_value = "github.com"
    )]
    git_token_hosts: Vec<String>,
    #[arg(
        long = "clone-timeout-seconds",
        env = "ENCLII_CLONE_TIMEOUT_SECONDS",
        default_value_t = 240
    )]
    clone_timeout_seconds: u64,
    /// The Docker CLI driving BuildKit builds on the engine (needs BuildKit: a 20.10 CLI, or a
    /// newer one with buildx). Default: `/usr/bin/docker` when present, else `docker`.
    #[arg(long = "docker-cli", env = "ENCLII_DOCKER_CLI")]
    docker_cli: Option<PathBuf>,
    /// The Docker engine that builds and pushes.
    #[arg(
        long = "docker-host",
        env = "ENCLII_DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker_host: String,
    /// A build running longer is stopped on the builder and its release fails.
    #[arg(
        long = "build-timeout-seconds",
        env = "ENCLII_BUILD_TIMEOUT_SECONDS",
        default_value_t = 1200
    )]
    build_timeout_seconds: u64,
    /// CPUs a build's `RUN` steps may use (cgroup v2), e.g. `1.5`.
    #[arg(long = "build-cpus", env = "ENCLII_BUILD_CPUS")]
    build_cpus: Option<f64>,
    /// Memory a build's `RUN` steps may use, in MiB.
    #[arg(long = "build-memory-mib", env = "ENCLII_BUILD_MEMORY_MIB")]
    build_memory_mib: Option<u64>,
    /// The embedded registry keeps the images of each service's newest this many releases (and of
    /// every release a recent deployment ran); older ones are pruned hourly.
    #[arg(long = "image-keep", env = "ENCLII_IMAGE_KEEP", default_value_t = 10)]
    image_keep: usize,
    /// Archived step logs and source archives older than this are deleted (S3 or directory).
    #[arg(
        long = "artefact-retention-days",
        env = "ENCLII_ARTEFACT_RETENTION_DAYS",
        default_value_t = 30
    )]
    artefact_retention_days: u64,
    /// Where per-job workspaces are made. Default: `<data-dir>/workspaces`.
    #[arg(long = "build-workspace", env = "ENCLII_BUILD_WORKSPACE")]
    build_workspace: Option<PathBuf>,
    /// PEM private key signing images (PKCS#8 ECDSA P-256, or a cosign key with
    /// ENCLII_SIGNING_KEY_PASSWORD). Default: generated once into `<data-dir>/cosign.key`, with
    /// the public key beside it in `cosign.pub`.
    #[arg(long = "signing-key", env = "ENCLII_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    #[arg(
        long = "signing-key-password",
        env = "ENCLII_SIGNING_KEY_PASSWORD",
        hide_env_values = true
    )]
    signing_key_password: Option<String>,
}

impl BuildArgs {
    /// The Docker engine builds (and the Docker deploy target) use.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    pub fn image_keep(&self) -> usize {
        self.image_keep.max(1)
    }

    pub fn registry_listen(&self) -> std::net::SocketAddr {
        self.registry_listen
    }

    /// The registry named by `ENCLII_REGISTRY`, if any.
    pub fn external_registry(&self) -> Option<RegistryConfig> {
        Some(RegistryConfig {
            host: self.registry.clone()?,
            insecure: self.registry_insecure,
            username: self.registry_username.clone(),
            password: self.registry_password.clone().map(Secret::new),
        })
    }

    /// `ENCLII_S3_BUCKET`, or the data directory's `artefacts` folder without it.
    pub fn artefacts(&self, data_dir: &Path) -> ArtefactConfig {
        match &self.s3_bucket {
            Some(bucket) => ArtefactConfig::S3(S3Config {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                bucket: bucket.clone(),
                access_key: self.s3_access_key.clone(),
                secret_key: Secret::new(self.s3_secret_key.clone()),
            }),
            None => ArtefactConfig::Directory(data_dir.join("artefacts")),
        }
    }

    /// The Docker CLI that drives builds: the configured one, else `/usr/bin/docker` when present,
    /// else `docker` on the PATH.
    fn docker_cli(&self) -> PathBuf {
        self.docker_cli.clone().unwrap_or_else(|| {
            let debian = PathBuf::from("/usr/bin/docker");
            if debian.exists() {
                debian
            } else {
                PathBuf::from("docker")
            }
        })
    }

    /// The URL schemes `clone` may fetch from (see `git_schemes`).
    pub fn git_schemes(&self, api_on_loopback: bool) -> Vec<String> {
        match &self.git_schemes {
            Some(schemes) => schemes.iter().map(|s| s.trim().to_ascii_lowercase()).collect(),
            None if api_on_loopback => vec!["https".into(), "file".into()],
            None => vec!["https".into()],
        }
    }

    /// The build configuration pushing to `registry`.
    pub fn config(
        &self,
        data_dir: &Path,
        registry: RegistryConfig,
        api_on_loopback: bool,
    ) -> anyhow::Result<BuildConfig> {
        Ok(BuildConfig {
            workspace_root: self
                .build_workspace
                .clone()
                .unwrap_or_else(|| data_dir.join("workspaces")),
            allowed_git_schemes: self.git_schemes(api_on_loopback),
            git_token: self.git_token.clone().map(Secret::new),
            git_token_hosts: self
                .git_token_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            clone_timeout: Duration::from_secs(self.clone_timeout_seconds),
            docker_cli: self.docker_cli(),
            docker_host: self.docker_host.clone(),
            build_timeout: Duration::from_secs(self.build_timeout_seconds),
            build_cpus: self.build_cpus,
            build_memory_bytes: self.build_memory_mib.map(|m| m << 20),
            registry,
            artefacts: self.artefacts(data_dir),
            artefact_retention: Duration::from_secs(self.artefact_retention_days.saturating_mul(86_400)),
            signing_key: self.signing_key(data_dir)?,
        })
    }

    /// Why this process cannot build, or `None` when it can: build steps turned off, no Docker
    /// engine answering, or no Docker CLI to drive BuildKit.
    pub async fn cannot_build(&self) -> Option<String> {
        if self.build_steps == BuildSteps::Off {
            return Some("build steps are off here (ENCLII_BUILD_STEPS=off)".into());
        }
        if let Err(e) = enclii_build::engine_version(&self.docker_host).await {
            return Some(format!(
                "no Docker engine at {} ({e}); start Docker or set ENCLII_DOCKER_HOST",
                self.docker_host
            ));
        }
        let cli = self.docker_cli();
        let found = cli.components().count() > 1 && cli.exists()
            || std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(&cli).is_file()));
        (!found).then(|| {
            format!(
                "no Docker CLI at {} to drive BuildKit; install docker-cli or set ENCLII_DOCKER_CLI",
                cli.display()
            )
        })
    }

    /// The configured signing key, or the one kept in the data directory (created on first use).
    fn signing_key(&self, data_dir: &Path) -> anyhow::Result<SigningKey> {
        let password = self.signing_key_password.clone().map(Secret::new);
        if let Some(path) = &self.signing_key {
            let pem = std::fs::read(path).with_context(|| format!("cannot read the signing key {}", path.display()))?;
            return SigningKey::from_pem(&pem, password.as_ref())
                .map_err(|e| anyhow::anyhow!("ENCLII_SIGNING_KEY {}: {e}", path.display()));
        }
        let path = data_dir.join("cosign.key");
        match std::fs::read(&path) {
            Ok(pem) => SigningKey::from_pem(&pem, None)
                .map_err(|e| anyhow::anyhow!("{}: {e}; restore the file or set ENCLII_SIGNING_KEY", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate().map_err(|e| anyhow::anyhow!("generating a signing key: {e}"))?;
                let private = key.private_pem().map_err(|e| anyhow::anyhow!("{e}"))?;
                crate::server::write_private(&path, private.expose())
                    .with_context(|| format!("cannot write the signing key to {}", path.display()))?;
                std::fs::write(data_dir.join("cosign.pub"), key.public_pem())?;
                tracing::warn!(path = %path.display(), "generated an image signing key; verify with cosign.pub beside it, or set ENCLII_SIGNING_KEY");
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read the signing key {}", path.display())),
        }
    }
}

/// The deploy policy's registry check: the release's image, pinned by digest, must carry a cosign
/// signature by the platform's key or by the project's own (secret `COSIGN_PRIVATE_KEY`).
pub struct RegistrySignatures {
    pub store: std::sync::Arc<enclii_store::Store>,
    pub registry: RegistryConfig,
    pub key: VerifyingKey,
}

#[async_trait::async_trait]
impl enclii_api::SignaturePolicy for RegistrySignatures {
    async fn check(&self, release: &enclii_store::Release) -> Result<(), String> {
        let digest = release.digest.as_deref().ok_or("its image has no digest")?;
        let image = format!("{}@{digest}", enclii_build::image_name(&release.image));
        let project_key = enclii_build::project_signing_key(&self.store, release)
            .await
            .map_err(|e| e.message)?
            .map(|key| key.verifying_key().clone());
        let auth = self.registry.auth_for(&image);
        let mut last = String::new();
        for key in project_key.iter().chain(std::iter::once(&self.key)) {
            match enclii_signing::verify(&auth, &image, key).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!(
            "the deploy policy refuses images whose signature does not verify: {last}"
        ))
    }
}

/// `enclii verify <image> --key cosign.pub`: checks an image's cosign signature in its registry.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The image, by tag or digest (`registry/project/service:tag`).
    image: String,
    /// The public key (PEM) signatures must verify with.
    #[arg(long, env = "ENCLII_VERIFY_KEY")]
    key: PathBuf,
    /// Speak plain HTTP to the registry.
    #[arg(long, env = "ENCLII_REGISTRY_INSECURE")]
    insecure: bool,
    #[arg(long, env = "ENCLII_REGISTRY_USERNAME")]
    username: Option<String>,
    #[arg(long, env = "ENCLII_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// Exit code of a signature that is missing or does not verify (the CLI's validation code).
pub const NOT_VERIFIED: u8 = 10;

/// Checks `args.image`; `json` prints the verdict as one JSON object (the global `--output`).
pub async fn verify(args: VerifyArgs, json: bool) -> anyhow::Result<u8> {
    let pem = std::fs::read(&args.key).with_context(|| format!("cannot read the public key {}", args.key.display()))?;
    let key = VerifyingKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    let auth = RegistryAuth {
        insecure: args.insecure,
        username: args.username.clone(),
        password: args.password.clone().map(Secret::new),
    };
    match enclii_signing::verify(&auth, &args.image, &key).await {
        Ok(verified) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"verified": true, "image": verified.image, "digest": verified.digest, "annotations": verified.annotations})
                );
            } else {
                println!("Verified OK: {} is signed by {}", verified.image, args.key.display());
                for (key, value) in &verified.annotations {
                    println!("  {key}: {value}");
                }
            }
            Ok(0)
        }
        Err(
            e @ (SigningError::Unsigned { .. }
            | SigningError::SignatureMismatch { .. }
            | SigningError::PayloadMismatch { .. }),
        ) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"verified": false, "image": args.image, "error": e.to_string()})
                );
            } else {
                eprintln!("error: {e}");
            }
            Ok(NOT_VERIFIED)
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
