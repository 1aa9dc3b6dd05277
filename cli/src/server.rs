//! `enclii server`: one process that runs any of the api, worker and scheduler roles; and
//! `enclii server recover-owner`, which gives the platform an Owner again; `backup` and
//! `restore`, the control plane's own backups (`server/backup.rs`).

mod backup;
mod builds;
mod domains;
mod files;
mod http;
mod images;
mod owner;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use enclii_api::auth::RateLimit;
use enclii_auth::oidc::{OidcConfig, OidcVerifier};
use enclii_queue::Backend;
use enclii_store::{MasterKey, Store, StoreConfig};
use enclii_worker::{Registry, Worker, WorkerConfig};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub(crate) use files::write_private;

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
    /// Where the embedded SQLite database, the generated keys and the router table live. Kept
    /// private: 0700, its files 0600 (tightened at start when found open).
    #[arg(long, env = "ENCLII_DATA_DIR", default_value = ".enclii", global = true)]
    data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user@host/db`); without it, SQLite in the data directory.
    #[arg(long, env = "ENCLII_DATABASE_URL", hide_env_values = true, global = true)]
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
    #[arg(long, env = "ENCLII_MASTER_KEY", hide_env_values = true, global = true)]
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
    /// Failed authentications per minute per client address (the burst is the same); past them
    /// the address gets 429 before any token it sends is looked up.
    #[arg(long, env = "ENCLII_AUTH_FAILURES_PER_MINUTE", default_value_t = 30)]
    auth_failures_per_minute: u32,
    /// The API is reached only through a proxy that appends the client's address to
    /// X-Forwarded-For: count clients by its last entry. Leave off when clients reach the API
    /// directly (they could pick the address they are counted as).
    #[arg(long, env = "ENCLII_TRUST_FORWARDED_FOR", default_value_t = false)]
    trust_forwarded_for: bool,
    /// Live job-log streams one token may hold open at once.
    #[arg(long, env = "ENCLII_LOG_STREAMS_PER_TOKEN", default_value_t = 16)]
    log_streams_per_token: usize,
    /// Use this as the bootstrap admin token instead of a random one (automation and tests;
    /// format `enclii_pat_<12 chars>_<43 chars>`). Only used while nobody holds a role.
    #[arg(long, env = "ENCLII_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    #[command(flatten)]
    http: http::HttpLimits,
    #[command(flatten)]
    build: crate::build::BuildArgs,
    #[command(flatten)]
    deploy: crate::deploy::DeployArgs,
    #[command(flatten)]
    domains: domains::DomainArgs,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(flatten)]
    backups: backup::ScheduleArgs,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Make a subject Owner of every project again and print a new token for it, once — for when
    /// no Owner can sign in. Uses the server's database (same --data-dir / --database-url and
    /// ENCLII_* variables); audited as `operator:recover-owner`.
    RecoverOwner(owner::RecoverOwnerArgs),
    /// Take a control-plane snapshot now (the SQLite database, consistent while the server runs,
    /// and the data directory's keys) to the artefact store or `--to` a file, and say where.
    Backup(backup::BackupArgs),
    /// Bring a data directory back from a snapshot (`--from <file | control-plane/<key> |
    /// latest>`), or a PostgreSQL database from a pg_dump file (with --database-url).
    Restore(backup::RestoreArgs),
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

    /// The data directory, created private or made private (see `files::private_dir`).
    fn data_dir(&self) -> anyhow::Result<&Path> {
        files::private_dir(&self.data_dir).with_context(|| {
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
        // Created 0600 before SQLite opens it, so its -wal and -shm files are 0600 too.
        files::create_private(&path).with_context(|| format!("cannot create the database {}", path.display()))?;
        Ok((
            format!("sqlite://{}", path.display()),
            format!("sqlite at {}", path.display()),
        ))
    }

    /// The configured master key, or the one kept in the data directory (created on first use).
    fn master_key(&self) -> anyhow::Result<MasterKey> {
        match self.existing_master_key()? {
            Some(key) => Ok(key),
            None => {
                let path = self.data_dir()?.join("master.key");
                let key = MasterKey::generate();
                write_private(&path, &key.to_base64())
                    .with_context(|| format!("cannot write the master key to {}", path.display()))?;
                tracing::warn!(path = %path.display(), "generated a master key for sealing secrets; back it up, or set ENCLII_MASTER_KEY");
                Ok(key)
            }
        }
    }

    /// The configured master key, or the one in the data directory if there is one.
    fn existing_master_key(&self) -> anyhow::Result<Option<MasterKey>> {
        if let Some(text) = &self.master_key {
            return MasterKey::from_base64(text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("ENCLII_MASTER_KEY: {e}; generate one with `openssl rand -base64 32`"));
        }
        let path = self.data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => MasterKey::from_base64(&text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}: {e}; restore the file or set ENCLII_MASTER_KEY", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the master key {}", path.display())),
        }
    }

    /// Opens the control plane's database (and the queue in it, or in Redis when `queue` says so).
    async fn open_store(&self, master_key: MasterKey, queue: bool) -> anyhow::Result<(Store, String)> {
        let (url, described) = self.database_url()?;
        let store = Store::open(StoreConfig {
            database_url: url,
            queue_url: if queue { self.redis_url.clone() } else { None },
            max_connections: 16,
            master_key,
        })
        .await
        .with_context(|| format!("cannot open the database ({described})"))?;
        Ok((store, described))
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

/// The job handlers this process runs: `ping` and `domain-verify` always; the build steps when it can build (see
/// `builds.rs`); the deploy kinds when a deploy target is connected. Until a worker has a handler
/// for a kind, its jobs wait in the queue (and their releases say why).
async fn registry(
    build: Option<enclii_build::BuildConfig>,
    deployer: Option<(Arc<enclii_deploy::Deployer>, enclii_store::Prices)>,
    verifier: enclii_deploy::domains::DomainVerifier,
    issuer: Option<enclii_deploy::certificates::CertificateIssuer>,
    store: &Arc<Store>,
) -> anyhow::Result<(Registry, Option<Arc<enclii_build::BuildSteps>>)> {
    let mut registry = Registry::new();
    enclii_deploy::domains::register(&mut registry, verifier);
    if let Some(issuer) = issuer {
        enclii_deploy::certificates::register(&mut registry, issuer);
        info!("certificate orders enabled (cert-order)");
    }
    match deployer {
        Some((deployer, prices)) => {
            info!(
                target = deployer.target().name(),
                "deploys enabled (deploy, canary-analyze, preview-teardown, teardown, route-sync, job-run, cost-sample)"
            );
            enclii_deploy::register(&mut registry, deployer, prices);
        }
        None => info!("deploys disabled: no deploy target in this process"),
    }
    registry.register_typed::<enclii_domain::jobs::Ping, _>(PingHandler);
    let steps = match build {
        Some(config) => {
            let steps = enclii_build::BuildSteps::new(store.clone(), config)
                .await
                .map_err(|e| anyhow::anyhow!("build steps: {e}"))?;
            let steps = Arc::new(steps);
            enclii_build::register(&mut registry, steps.clone());
            info!("build steps enabled (clone, build, push, sbom, sign)");
            Some(steps)
        }
        None => None,
    };
    Ok((registry, steps))
}

/// The deploy kinds, which a worker without a deploy target cannot run.
fn deploy_kinds() -> [&'static str; 6] {
    use enclii_domain::jobs;
    use enclii_queue::JobKind;
    [
        jobs::Deploy::KIND,
        jobs::CanaryAnalyze::KIND,
        jobs::PreviewTeardown::KIND,
        jobs::RouteSync::KIND,
        jobs::JobRun::KIND,
        jobs::CostSample::KIND,
    ]
}

/// Deletes artefacts past their retention once an hour, until shutdown. A failed pass is logged;
/// the next one tries again.
async fn prune_artefacts(steps: Arc<enclii_build::BuildSteps>, shutdown: CancellationToken) -> anyhow::Result<()> {
    const EVERY: Duration = Duration::from_secs(3600);
    loop {
        match steps.prune_artefacts().await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "pruned artefacts past their retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune artefacts; will try again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(EVERY) => {}
        }
    }
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
    match &args.command {
        Some(ServerCommand::RecoverOwner(recover)) => recover_owner(&args, recover).await,
        Some(ServerCommand::Backup(backup)) => {
            let _telemetry = command_telemetry(&args, "backup")?;
            backup::backup(&args, backup).await
        }
        Some(ServerCommand::Restore(restore)) => {
            let _telemetry = command_telemetry(&args, "restore")?;
            backup::restore(&args, restore).await
        }
        None => start(args).await,
    }
}

/// Logs of a one-off `enclii server` command (no trace export).
fn command_telemetry(args: &ServerArgs, role: &str) -> anyhow::Result<enclii_telemetry::Telemetry> {
    enclii_telemetry::init(&enclii_telemetry::Config {
        json: args.log_json,
        otlp_endpoint: None,
        role: role.into(),
    })
    .map_err(Into::into)
}

/// `enclii server recover-owner`: one transaction on the server's database, one token printed.
async fn recover_owner(args: &ServerArgs, recover: &owner::RecoverOwnerArgs) -> anyhow::Result<()> {
    let _telemetry = command_telemetry(args, "recover-owner")?;
    // Recovery seals and opens nothing: the store needs a key to open, not the right one, and a
    // missing one is not generated (that is the server's first start).
    let key = args.existing_master_key()?.unwrap_or_else(MasterKey::generate);
    let (store, described) = args.open_store(key, false).await?;
    let token = owner::recover(&store, recover).await?;
    info!(database = %described, actor = owner::RECOVERY_ACTOR, "Owner on * recovered");
    // Shown once, on stdout only: it is never logged.
    announce(&format!(
        "Owner of every project: {}; new token (shown once; keep it safe): {token}",
        recover.subject()
    ));
    Ok(())
}

/// Binds a listener, saying what to do when the address is taken.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} cannot listen on {addr} (is another process using it? set {flag})"))
}

async fn start(args: ServerArgs) -> anyhow::Result<()> {
    let mut telemetry = init_telemetry(&args)?;
    // A data directory found open is made private even when this process keeps nothing new in
    // it (PostgreSQL and given keys); one that is missing is created private when first needed.
    if args.data_dir.exists() {
        args.data_dir()?;
    }
    let metrics = enclii_api::metrics::install();
    let (store, described) = args.open_store(args.master_key()?, true).await?;
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

    let builds = builds::plan(
        &args.build,
        args.data_dir()?,
        args.runs(ServerRole::Api),
        args.runs(ServerRole::Worker),
        args.listen().ip().is_loopback(),
    )
    .await?;
    let build = builds.config.clone();
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
    // Listeners before the bootstrap: a start that cannot listen must stop before it creates
    // the first Owner, or its token would be spent unseen.
    let listener = bind(args.listen(), "the API", "--listen").await?;
    let addr = listener.local_addr()?;
    // The deploy target (worker role): the worker deploys with it, the API reads runtime logs
    // and status from it.
    let mut connected = match args.runs(ServerRole::Worker) {
        true => {
            let registry = &builds.registry;
            let registry_login =
                registry
                    .username
                    .clone()
                    .zip(registry.password.as_ref())
                    .map(|(username, password)| enclii_deploy_docker::RegistryLogin {
                        host: registry.host.clone(),
                        username,
                        password: password.expose().to_string(),
                    });
            let events = Arc::new(enclii_deploy::events::StoreReplicaEvents(store.clone()));
            args.deploy
                .connect(args.build.docker_host(), args.data_dir()?, registry_login, events)
                .await?
        }
        false => None,
    };
    let deploy_target = connected.as_ref().map(|c| c.target.name().to_string());
    let router = match connected.as_mut().and_then(|c| c.router.take()) {
        Some((listen, junctions)) => Some((bind(listen, "the router", "--router-listen").await?, junctions)),
        None => None,
    };
    args.tls.validate()?;
    let tls_router = match (&router, args.tls.listen()) {
        (Some((_, junctions)), Some(listen)) => {
            let listener = bind(listen, "the router's HTTPS listener", "--router-tls-listen").await?;
            let (config, certificates, misses) = args.tls.enable(junctions, store.clone())?;
            Some((listener, config, certificates, misses, junctions.clone()))
        }
        (None, Some(_)) => {
            tracing::warn!(
                "ENCLII_ROUTER_TLS_LISTEN is set, but this process runs no Junctions router (Docker target, worker role): ignored"
            );
            None
        }
        _ => None,
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
        base_domain: args.deploy.deployer_config().base_domain,
        domains: args.domains.settings(args.tls.acme().is_some()),
    };
    let limits = enclii_api::ClientLimits {
        auth_failures: RateLimit {
            per_minute: args.auth_failures_per_minute,
            burst: args.auth_failures_per_minute,
        },
        trust_forwarded_for: args.trust_forwarded_for,
        log_streams_per_token: args.log_streams_per_token,
    };
    let app = enclii_api::router(enclii_api::AppState::with_limits(
        store.clone(),
        metrics,
        config,
        limits,
    ));
    let worker = match args.runs(ServerRole::Worker) {
        true => {
            let deployer = connected.map(|connected| {
                let config = enclii_deploy::DeployerConfig {
                    artefacts: Some(args.build.artefacts(&args.data_dir)),
                    ..args.deploy.deployer_config()
                };
                let deployer =
                    enclii_deploy::Deployer::new(store.clone(), connected.target, api_signatures.clone(), config);
                (Arc::new(deployer), args.deploy.prices())
            });
            let config = WorkerConfig {
                lease: Duration::from_secs(args.lease_seconds.max(2)),
                heartbeat_every: Duration::from_secs(args.lease_seconds.max(2)) / 4,
                shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
                ..WorkerConfig::with_concurrency(args.concurrency)
            };
            let mut unavailable = builds.unavailable();
            if deployer.is_none() {
                let reason = format!(
                    "no deploy target here ({})",
                    args.deploy.why_off(args.build.docker_host())
                );
                unavailable.extend(deploy_kinds().map(|kind| (kind.to_string(), reason.clone())));
            }
            let verifier = enclii_deploy::domains::DomainVerifier::new(store.clone(), &args.domains.resolver()?)
                .map_err(anyhow::Error::msg)?
                .ordering_certificates(args.tls.acme().is_some());
            let issuer = args
                .tls
                .acme()
                .map(|acme| enclii_deploy::certificates::CertificateIssuer::new(store.clone(), acme));
            let (registry, steps) = registry(build.clone(), deployer, verifier, issuer, &store).await?;
            Some((Worker::new(backend.clone(), registry, config), steps, unavailable))
        }
        false => None,
    };
    // Control-plane snapshots (scheduler role): the schedule, or why there is none.
    let backups = match args.runs(ServerRole::Scheduler) {
        true => Some(backup::Schedule::plan(&args)?),
        false => None,
    };
    // Nothing below can stop the start: only now is the first Owner created, and its token is
    // printed right after.
    let bootstrap_token = match args.runs(ServerRole::Api) {
        true => owner::bootstrap(&store, args.bootstrap_token.as_deref()).await?,
        false => None,
    };

    tasks.spawn(http::serve(listener, app, args.http, shutdown.clone()).map(Ok));
    info!(%addr, "listening");
    // The first line is the address (scripts and tests read it); the summary follows.
    announce(&format!("enclii listening on http://{addr}"));
    let mut summary = vec![("database", described.clone()), ("queue", backend.name().to_string())];
    summary.extend(builds.summary.iter().cloned());
    if let Some(embedded) = builds.embedded {
        info!(listen = %embedded.listener.local_addr()?, "embedded registry listening");
        let router = embedded.registry.router();
        tasks.spawn(http::serve(embedded.listener, router, args.http, shutdown.clone()).map(Ok));
        tasks.spawn(images::prune(
            embedded.registry,
            store.clone(),
            embedded.host,
            args.build.image_keep(),
            shutdown.clone(),
        ));
    }
    if args.runs(ServerRole::Worker) {
        summary.push((
            "deploys",
            match &deploy_target {
                Some(name) => format!("on, to {name}"),
                None => format!("off: {}", args.deploy.why_off(args.build.docker_host())),
            },
        ));
    }
    if let Some((listener, junctions)) = router {
        let listen = listener.local_addr()?;
        info!(%listen, "Junctions router listening");
        summary.push(("router", {
            let hosts = args.deploy.deployer_config();
            let base = hosts
                .base_domain
                .map(|d| format!(", deployments at <service>.<project>.{d}"))
                .unwrap_or_default();
            format!(
                "http://{listen} (routes by Host header; previews at <service>-preview-<n>.{}{base})",
                hosts.preview_domain
            )
        }));
        tasks.spawn(http::serve(listener, junctions.app(), args.http, shutdown.clone()).map(Ok));
    }
    if let Some((listener, config, certificates, misses, junctions)) = tls_router {
        let listen = listener.local_addr()?;
        info!(%listen, "Junctions router listening for HTTPS");
        let source = match args.tls.acme() {
            Some(acme) => format!("certificates from {}", acme.directory),
            None => "certificates from ENCLII_ROUTER_TLS_CERT only".to_string(),
        };
        summary.push((
            "https",
            format!("https://{listen} ({source}; HTTP redirects to HTTPS once a host has one)"),
        ));
        tasks.spawn(tls::sync(store.clone(), certificates, Duration::from_secs(2), shutdown.clone()).map(Ok));
        if args.tls.acme().is_some() {
            let hosts = args.deploy.deployer_config();
            let generated = std::iter::once(hosts.preview_domain).chain(hosts.base_domain).collect();
            let per_hour = args.tls.on_demand_per_hour();
            let order = tls::order_on_first_use(
                store.clone(),
                junctions.clone(),
                misses,
                generated,
                per_hour,
                shutdown.clone(),
            );
            tasks.spawn(order.map(Ok));
        }
        tasks.spawn(http::serve_tls(listener, junctions.tls_app(), args.http, config, shutdown.clone()).map(Ok));
    }
    if args.runs(ServerRole::Api) {
        summary.push(("dashboard", format!("http://{addr}/ui/")));
    }
    if let Some((_, line)) = &backups {
        summary.push(("backups", line.clone()));
    }
    if let Some(token) = bootstrap_token {
        // Shown once, on stdout only: it is never logged.
        announce(&format!("bootstrap admin token (shown once; keep it safe): {token}"));
    }
    for (what, line) in &summary {
        info!(what, "{line}");
        announce(&format!("  {what:<10} {line}"));
    }
    if let Some((worker, steps, unavailable)) = worker {
        tasks.spawn(heartbeats(store.clone(), &worker, unavailable, shutdown.clone()));
        if let Some(steps) = steps {
            tasks.spawn(prune_artefacts(steps, shutdown.clone()));
        }
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await.context("worker failed") });
    }
    if args.runs(ServerRole::Scheduler) {
        // One scheduler acts at a time (leader lease); it also prunes jobs and job logs.
        let config = enclii_scheduler::SchedulerConfig {
            retention: Duration::from_secs(args.job_retention_hours * 3600),
            cost_every: Duration::from_secs(args.cost_every_seconds.max(10)),
            preview_ttl: Duration::from_secs(args.preview_ttl_hours * 3600),
            renew_certificates_before: args.tls.renew_before(),
            certificates_every: args.tls.check_every(),
            ..Default::default()
        };
        let (store, token) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            enclii_scheduler::run(store, config, token).await;
            Ok(())
        });
    }
    if let Some((Some(schedule), _)) = backups {
        tasks.spawn(backup::every(schedule, shutdown.clone()));
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
    unavailable: std::collections::BTreeMap<String, String>,
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
            unavailable: &unavailable,
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
