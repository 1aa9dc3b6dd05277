//! `enclii server`: one process that runs any of the api, worker and scheduler roles.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use enclii_api::auth::{Permission, RateLimit, Role};
use enclii_auth::oidc::{OidcConfig, OidcVerifier};
use enclii_queue::Backend;
use enclii_store::{MasterKey, Store, StoreConfig};
use enclii_worker::{Registry, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServerRole {
    Api,
    Worker,
    Scheduler,
    All,
}

/// Configuration of a server process. Every flag has an `ENCLII_*` environment variable.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Roles this process runs; repeat or comma-separate. Worker-only processes can be started any
    /// number of times against one database.
    #[arg(long, env = "ENCLII_ROLE", value_delimiter = ',', default_value = "all")]
    role: Vec<ServerRole>,
    /// Address for the HTTP API, health and metrics. Default: 127.0.0.1:8080 when the process
    /// runs the api role, a free port otherwise (so several workers can share a host).
    #[arg(long, env = "ENCLII_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where the embedded SQLite database lives when no database URL is given.
    #[arg(long, env = "ENCLII_DATA_DIR", default_value = ".enclii")]
    data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user@host/db`); without it, SQLite in the data directory.
    #[arg(long, env = "ENCLII_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Redis URL for the job queue (`redis://host:6379`); overrides the database for queueing.
    #[arg(long, env = "ENCLII_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Jobs a worker runs at once.
    #[arg(long, env = "ENCLII_WORKER_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
    /// Seconds a job stays leased without a heartbeat (a crashed worker's jobs rerun after this).
    #[arg(long, env = "ENCLII_LEASE_SECONDS", default_value_t = 8)]
    lease_seconds: u64,
    /// Seconds in-flight jobs may run on after SIGTERM before they are handed back.
    #[arg(long, env = "ENCLII_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Hours finished jobs are kept before pruning.
    #[arg(long, env = "ENCLII_JOB_RETENTION_HOURS", default_value_t = 24)]
    job_retention_hours: u64,
    /// Seconds between cost samples of each deployed service (scheduler role).
    #[arg(long, env = "ENCLII_COST_EVERY_SECONDS", default_value_t = 300)]
    cost_every_seconds: u64,
    /// Hours a preview environment may stay idle (no release or deployment) before it is torn down.
    #[arg(long, env = "ENCLII_PREVIEW_TTL_HOURS", default_value_t = 72)]
    preview_ttl_hours: u64,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ENCLII_LOG_JSON")]
    log_json: bool,
    /// OTLP/HTTP endpoint (base URL, e.g. `http://collector:4318`) to export traces to; without
    /// it the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is used, and with neither nothing is exported.
    #[arg(long, env = "ENCLII_OTLP_ENDPOINT", hide_env_values = true)]
    otlp_endpoint: Option<String>,
    /// Master key sealing secrets at rest (base64 of 32 bytes; `openssl rand -base64 32`).
    /// Without it, a key is generated once into `<data-dir>/master.key` (fine for one machine;
    /// give every api process the same key when several share a database).
    #[arg(long, env = "ENCLII_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// The secret GitHub signs webhook deliveries with; `/v1/webhooks/github` refuses all without it.
    #[arg(long, env = "ENCLII_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    github_webhook_secret: Option<String>,
    /// OIDC issuer (`iss`) whose bearer tokens are accepted; needs the audience and JWKS URL too.
    #[arg(long, env = "ENCLII_OIDC_ISSUER", requires_all = ["oidc_audience", "oidc_jwks_url"])]
    oidc_issuer: Option<String>,
    /// OIDC audience (`aud`) tokens must carry.
    #[arg(long, env = "ENCLII_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,
    /// The issuer's JWKS URL (its discovery document's `jwks_uri`).
    #[arg(long, env = "ENCLII_OIDC_JWKS_URL")]
    oidc_jwks_url: Option<String>,
    /// API requests per minute per token (sustained).
    #[arg(long, env = "ENCLII_RATE_LIMIT_PER_MINUTE", default_value_t = 60)]
    rate_limit_per_minute: u32,
    /// API request burst per token.
    #[arg(long, env = "ENCLII_RATE_LIMIT_BURST", default_value_t = 120)]
    rate_limit_burst: u32,
    /// Webhook deliveries per minute per project (sustained; the burst is twice this).
    #[arg(long, env = "ENCLII_WEBHOOK_RATE_PER_MINUTE", default_value_t = 600)]
    webhook_rate_per_minute: u32,
    /// Use this as the bootstrap admin token instead of a random one (automation and tests;
    /// format `enclii_pat_<12 chars>_<43 chars>`). Only used while nobody holds a role.
    #[arg(long, env = "ENCLII_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    #[command(flatten)]
    build: crate::build::BuildArgs,
    #[command(flatten)]
    deploy: crate::deploy::DeployArgs,
}

impl ServerArgs {
    fn runs(&self, role: ServerRole) -> bool {
        self.role.contains(&ServerRole::All) || self.role.contains(&role)
    }

    fn listen(&self) -> SocketAddr {
        let default_port = if self.runs(ServerRole::Api) { 8080 } else { 0 };
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }

    fn data_dir(&self) -> anyhow::Result<&Path> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} (set --data-dir or ENCLII_DATA_DIR to a writable path)",
                self.data_dir.display()
            )
        })?;
        Ok(&self.data_dir)
    }

    /// The database URL, and a description of it that is safe to log (no credentials).
    fn database_url(&self) -> anyhow::Result<(String, String)> {
        if let Some(url) = &self.database_url {
            return Ok((url.clone(), "postgres".into()));
        }
        let path = self.data_dir()?.join("enclii.db");
        Ok((
            format!("sqlite://{}", path.display()),
            format!("sqlite at {}", path.display()),
        ))
    }

    /// The configured master key, or the one kept in the data directory (created on first use).
    fn master_key(&self) -> anyhow::Result<MasterKey> {
        if let Some(text) = &self.master_key {
            return MasterKey::from_base64(text)
                .map_err(|e| anyhow::anyhow!("ENCLII_MASTER_KEY: {e}; generate one with `openssl rand -base64 32`"));
        }
        let path = self.data_dir()?.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => MasterKey::from_base64(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}; restore the file or set ENCLII_MASTER_KEY", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::generate();
                write_private(&path, &key.to_base64())
                    .with_context(|| format!("cannot write the master key to {}", path.display()))?;
                tracing::warn!(path = %path.display(), "generated a master key for sealing secrets; back it up, or set ENCLII_MASTER_KEY");
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read the master key {}", path.display())),
        }
    }

    fn oidc(&self) -> anyhow::Result<Option<OidcVerifier>> {
        let (Some(issuer), Some(audience), Some(jwks)) = (&self.oidc_issuer, &self.oidc_audience, &self.oidc_jwks_url)
        else {
            return Ok(None);
        };
        let verifier = OidcVerifier::new(OidcConfig::new(issuer, audience, jwks))
            .map_err(|e| anyhow::anyhow!("OIDC settings: {e}"))?;
        Ok(Some(verifier))
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
}

/// On a fresh installation (nobody holds a role), creates `user:admin` as Owner of every project
/// with a token, and returns the token to show once.
async fn bootstrap(store: &Store, given: Option<&str>) -> anyhow::Result<Option<String>> {
    let (plaintext, id, secret_hash) = match given {
        Some(token) => {
            let (id, secret) = enclii_auth::token::parse(token)
                .context("ENCLII_BOOTSTRAP_TOKEN is not a token of the form enclii_pat_<id>_<secret>")?;
            (token.to_string(), id.to_string(), enclii_auth::token::hash(secret))
        }
        None => {
            let token = enclii_auth::token::generate();
            (token.plaintext, token.id, token.secret_hash)
        }
    };
    let record = enclii_store::TokenRecord {
        id,
        secret_hash,
        subject: "user:admin".into(),
        name: "bootstrap".into(),
        scopes: serde_json::to_string(&Permission::ALL.map(|p| p.scope()))?,
        project: None,
        created_at: chrono::Utc::now().timestamp_millis(),
        expires_at: None,
        revoked_at: None,
    };
    let created = store.bootstrap("user:admin", Role::Owner.as_str(), &record).await?;
    Ok(created.then_some(plaintext))
}

/// Logs (human or JSON) and, when an OTLP endpoint is configured, trace export; flushed when the
/// returned guard is dropped.
fn init_telemetry(args: &ServerArgs) -> anyhow::Result<enclii_telemetry::Telemetry> {
    let role = args
        .role
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect::<Vec<_>>();
    let telemetry = enclii_telemetry::init(&enclii_telemetry::Config {
        json: args.log_json,
        otlp_endpoint: args.otlp_endpoint.clone(),
        role: role.join(","),
    })?;
    if let enclii_telemetry::Export::Endpoint(url) | enclii_telemetry::Export::Standard(url) = telemetry.export() {
        info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    }
    Ok(telemetry)
}

/// The job handlers this process runs: `ping` always; the build steps when a registry and an
/// artefact bucket are configured; the deploy kinds when a deploy target is connected. Until a
/// worker has a handler for a kind, its jobs wait in the queue.
async fn registry(
    build: Option<enclii_build::BuildConfig>,
    deployer: Option<(Arc<enclii_deploy::Deployer>, enclii_store::Prices)>,
    store: &Arc<Store>,
) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    match deployer {
        Some((deployer, prices)) => {
            info!(
                target = deployer.target().name(),
                "deploys enabled (deploy, canary-analyze, preview-teardown, job-run, cost-sample)"
            );
            enclii_deploy::register(&mut registry, deployer, prices);
        }
        None => info!("deploys disabled: no deploy target in this process"),
    }
    registry.register_typed::<enclii_domain::jobs::Ping, _>(PingHandler);
    match build {
        Some(config) => {
            let steps = enclii_build::BuildSteps::new(store.clone(), config)
                .await
                .map_err(|e| anyhow::anyhow!("build steps: {e}"))?;
            enclii_build::register(&mut registry, Arc::new(steps));
            info!("build steps enabled (clone, build, push, sbom, sign)");
        }
        None => info!(
            "build steps disabled: set ENCLII_REGISTRY and ENCLII_S3_BUCKET to run clone, build, push, sbom and sign jobs here"
        ),
    }
    Ok(registry)
}

struct PingHandler;

#[async_trait::async_trait]
impl enclii_worker::TypedHandler<enclii_domain::jobs::Ping> for PingHandler {
    async fn handle(
        &self,
        job: enclii_domain::jobs::Ping,
        _ctx: &enclii_worker::JobContext,
    ) -> Result<(), enclii_worker::JobError> {
        info!(message = %job.message, "ping");
        Ok(())
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    // The provider first: the OTLP exporter's HTTP client may need it for https.
    enclii_signing::install_crypto_provider();
    let mut telemetry = init_telemetry(&args)?;
    let metrics = enclii_api::metrics::install();
    let (url, described) = args.database_url()?;
    let store = Store::open(StoreConfig {
        database_url: url,
        queue_url: args.redis_url.clone(),
        max_connections: 16,
        master_key: args.master_key()?,
    })
    .await
    .with_context(|| format!("cannot open the database ({described})"))?;
    let store = Arc::new(store);
    let backend: Arc<dyn Backend> = store.queue();
    // The queue keeps only the effective limits; give it the operators' controls again (a Redis
    // queue may have been flushed or replaced since they were set).
    for control in store.queue_controls().await? {
        backend
            .set_project_limits(&control.project, control.effective())
            .await?;
    }
    info!(database = %described, queue = backend.name(), roles = ?args.role, "starting");

    let bootstrap_token = if args.runs(ServerRole::Api) {
        bootstrap(&store, args.bootstrap_token.as_deref()).await?
    } else {
        None
    };

    let build = match args.build.enabled() {
        true => args.build.config(args.data_dir()?)?,
        false => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();

    let api_signatures = build.as_ref().map(|config| {
        Arc::new(crate::build::RegistrySignatures {
            store: store.clone(),
            registry: config.registry.clone(),
            key: config.signing_key.verifying_key().clone(),
        }) as Arc<dyn enclii_api::SignaturePolicy>
    });
    let listen = args.listen();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (is another process using it? set --listen)"))?;
    let addr = listener.local_addr()?;
    // The deploy target (worker role): the worker deploys with it, the API reads runtime logs
    // and status from it.
    let connected = match args.runs(ServerRole::Worker) {
        true => {
            let registry_login = build.as_ref().and_then(|config| {
                let registry = &config.registry;
                Some(enclii_deploy_docker::RegistryLogin {
                    host: registry.host.clone(),
                    username: registry.username.clone()?,
                    password: registry.password.as_ref()?.expose().to_string(),
                })
            });
            args.deploy
                .connect(args.build.docker_host(), args.data_dir()?, registry_login)
                .await?
        }
        false => None,
    };
    let config = enclii_api::ApiConfig {
        oidc: args.oidc()?,
        webhook_secret: args.github_webhook_secret.clone(),
        rate_limit: RateLimit {
            per_minute: args.rate_limit_per_minute,
            burst: args.rate_limit_burst,
        },
        webhook_rate_limit: RateLimit {
            per_minute: args.webhook_rate_per_minute,
            burst: args.webhook_rate_per_minute.saturating_mul(2),
        },
        serve_api: args.runs(ServerRole::Api),
        signatures: api_signatures.clone(),
        runtime: connected.as_ref().map(|c| c.target.clone()),
        preview_domain: args.deploy.deployer_config().preview_domain,
    };
    let app = enclii_api::router(enclii_api::AppState::new(store.clone(), metrics, config));
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
            .context("HTTP server failed")
    });
    info!(%addr, "listening");
    announce(&format!("enclii listening on http://{addr}"));
    if let Some(token) = bootstrap_token {
        // Shown once, on stdout only: it is never logged.
        announce(&format!("bootstrap admin token (shown once; keep it safe): {token}"));
    }

    if args.runs(ServerRole::Worker) {
        let deployer = connected.map(|connected| {
            if let Some((listen, junctions)) = connected.router {
                let token = shutdown.clone();
                tasks.spawn(async move {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("router cannot listen on {listen} (set --router-listen)"))?;
                    info!(%listen, "Junctions router listening");
                    axum::serve(
                        listener,
                        junctions.app().into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
                    .context("router failed")
                });
            }
            let deployer = enclii_deploy::Deployer::new(
                store.clone(),
                connected.target,
                api_signatures.clone(),
                args.deploy.deployer_config(),
            );
            (Arc::new(deployer), args.deploy.prices())
        });
        let config = WorkerConfig {
            lease: Duration::from_secs(args.lease_seconds.max(2)),
            heartbeat_every: Duration::from_secs(args.lease_seconds.max(2)) / 4,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
            ..WorkerConfig::with_concurrency(args.concurrency)
        };
        let worker = Worker::new(
            backend.clone(),
            registry(build.clone(), deployer, &store).await?,
            config,
        );
        tasks.spawn(heartbeats(store.clone(), &worker, shutdown.clone()));
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await.context("worker failed") });
    }
    if args.runs(ServerRole::Scheduler) {
        // One scheduler acts at a time (leader lease); it also prunes jobs and job logs.
        let config = enclii_scheduler::SchedulerConfig {
            retention: Duration::from_secs(args.job_retention_hours * 3600),
            cost_every: Duration::from_secs(args.cost_every_seconds.max(10)),
            preview_ttl: Duration::from_secs(args.preview_ttl_hours * 3600),
            ..Default::default()
        };
        let (store, token) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            enclii_scheduler::run(store, config, token).await;
            Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let outcome = done.context("a server task panicked").and_then(|r| r);
        if let Err(e) = outcome {
            shutdown.cancel();
            result = Err(e);
        }
    }
    info!("stopped");
    telemetry.shutdown();
    result
}

/// Tells operators this worker process is alive (the dashboard's workers view), until shutdown.
/// A failed beat is logged and retried: it must never stop the worker.
fn heartbeats(
    store: Arc<Store>,
    worker: &Worker,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
    const EVERY: Duration = Duration::from_secs(5);
    let (id, host, kinds, concurrency) = (
        worker.id().to_string(),
        worker.host().to_string(),
        worker.kinds(),
        worker.concurrency(),
    );
    async move {
        let beat = enclii_store::WorkerBeat {
            id: &id,
            host: &host,
            pid: std::process::id(),
            kinds: &kinds,
            concurrency,
        };
        loop {
            if let Err(e) = store.worker_heartbeat(&beat).await {
                tracing::warn!(error = %e, "worker heartbeat could not be recorded");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
        if let Err(e) = store.worker_stopped(&id).await {
            tracing::warn!(error = %e, "worker stop could not be recorded");
        }
        Ok(())
    }
}

/// Prints a line for the operator on stdout. A closed stdout (a supervisor that stopped reading)
/// must not take the server down, so write errors are ignored.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn signal_shutdown(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down gracefully"),
    }
    token.cancel();
}
