//! `enclii server`: one process that runs any of the api, worker and scheduler roles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use enclii_queue::Backend;
use enclii_worker::{Registry, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
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
    role: Vec<Role>,
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
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ENCLII_LOG_JSON")]
    log_json: bool,
}

impl ServerArgs {
    fn runs(&self, role: Role) -> bool {
        self.role.contains(&Role::All) || self.role.contains(&role)
    }

    fn listen(&self) -> SocketAddr {
        let default_port = if self.runs(Role::Api) { 8080 } else { 0 };
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }

    /// The queue URL, and a description of it that is safe to log (no credentials).
    fn queue_url(&self) -> anyhow::Result<(String, String)> {
        if let Some(url) = &self.redis_url {
            return Ok((url.clone(), "redis".into()));
        }
        if let Some(url) = &self.database_url {
            return Ok((url.clone(), "postgres".into()));
        }
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} (set --data-dir or ENCLII_DATA_DIR to a writable path)",
                self.data_dir.display()
            )
        })?;
        let path = self.data_dir.join("enclii.db");
        Ok((
            format!("sqlite://{}", path.display()),
            format!("sqlite at {}", path.display()),
        ))
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENCLII_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The job handlers compiled into this binary. Build, deploy and the other pipeline kinds land
/// with their issues; until a worker has a handler for a kind, its jobs wait in the queue.
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_typed::<enclii_domain::jobs::Ping, _>(PingHandler);
    registry
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
    init_logging(args.log_json);
    let metrics = enclii_api::metrics::install();
    let (url, described) = args.queue_url()?;
    let backend: Arc<dyn Backend> = enclii_queue::open(&url, 16)
        .await
        .with_context(|| format!("cannot open the job queue ({described})"))?;
    info!(queue = %described, roles = ?args.role, "starting");

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();

    let listen = args.listen();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (is another process using it? set --listen)"))?;
    let addr = listener.local_addr()?;
    let app = enclii_api::router(enclii_api::AppState::new(
        backend.clone(),
        metrics,
        args.runs(Role::Api),
    ));
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
            .context("HTTP server failed")
    });
    info!(%addr, "listening");
    println!("enclii listening on http://{addr}");

    if args.runs(Role::Worker) {
        let config = WorkerConfig {
            lease: Duration::from_secs(args.lease_seconds.max(2)),
            heartbeat_every: Duration::from_secs(args.lease_seconds.max(2)) / 4,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
            ..WorkerConfig::with_concurrency(args.concurrency)
        };
        let worker = Worker::new(backend.clone(), registry(), config);
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await.context("worker failed") });
    }
    if args.runs(Role::Scheduler) {
        let config = enclii_scheduler::SchedulerConfig {
            retention: Duration::from_secs(args.job_retention_hours * 3600),
            ..Default::default()
        };
        let token = shutdown.clone();
        let backend = backend.clone();
        tasks.spawn(async move {
            enclii_scheduler::run(backend, config, token).await;
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
    result
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
