//! Roundhouse load test: `loadtest <drain|steady|crash|fairness|wake|soak|skew> --backend
//! postgres|sqlite|redis` (`drain --workers K` with K worker processes),
//! and the API's `loadtest webhooks [--backend postgres|sqlite]`.
//!
//! Each run gets a fresh queue store (a new PostgreSQL database, a temp SQLite file, or a new Redis
//! key prefix), removes it at the end, and prints exactly one JSON line on stdout. Logs go to
//! stderr (`RUST_LOG`, default `warn`).

mod chaos;
mod chaos_check;
mod chaos_cut;
mod chaos_deploys;
mod chaos_docker;
mod chaos_faults;
mod chaos_platform;
mod chaos_probe;
mod chaos_proxy;
mod chaos_storm;
mod dbstats;
mod env;
mod meter;
mod operators;
mod scale;
mod soak;
mod store;
mod track;
mod webhooks;
mod workloads;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use enclii_worker::WorkerConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "loadtest", about = "Roundhouse load tests", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enqueue N (20,000) no-op jobs in bulk, then one worker (concurrency 32) drains them; with
    /// --workers K, K worker processes (concurrency 32 each) do, and the database's and the
    /// workers' CPU are reported.
    Drain(RunArgs),
    /// Enqueue one job per call at --rate (500/s) for N/rate (20 s) while one worker runs them.
    Steady(RunArgs),
    /// N (64) jobs sleeping 2 s; a worker child process is SIGKILLed mid-flight and a second one
    /// recovers them; counts lost and duplicated jobs.
    Crash(RunArgs),
    /// Project A enqueues N (10,000) 1 ms jobs, then project B --b-jobs (100); reports when each
    /// project finished.
    Fairness(RunArgs),
    /// A worker in another process: one job per enqueue call at --rate (500/s) for N (5,000)
    /// jobs; enqueue→start latency there, and that worker's CPU while idle.
    Wake(RunArgs),
    /// A deep backlog of N (1,000,000) low-priority jobs, then for --duration-s (600) fresh jobs
    /// at --rate (500/s, one per call, high and normal priority in turn) while one worker
    /// (concurrency 32) works everything: throughput, the fresh jobs' enqueue→start by priority,
    /// backlog left, table and index sizes before and after, database CPU per job.
    Soak(RunArgs),
    /// 1,000 (--projects) projects: one holds 90% of N (200,000) jobs, the others get a few each
    /// at --rate (500/s) while it drains: the small projects' enqueue→start, the big one's
    /// throughput.
    Skew(RunArgs),
    /// Signed GitHub `push` webhooks over HTTP on loopback into the API (in this process), each
    /// durably accepted with its release and pipeline: throughput and request latency.
    Webhooks(WebhookArgs),
    /// The operators' queue views (stats, dead jobs, throughput, workers, the live stream's first
    /// snapshot) over HTTP on a queue of --jobs jobs: latency percentiles.
    Operators(OperatorArgs),
    /// The whole platform under faults: real `enclii server` processes (api + workers), a storm of
    /// signed push webhooks, real builds and Docker deploys for a subset, kill -9 of workers (on a
    /// clock, mid-build, mid-deploy), PostgreSQL, Redis and Docker engine restarts, a worker cut
    /// off from the database, an API prober; then checks that nothing was lost or done twice.
    /// Exits non-zero if a check fails.
    Chaos(chaos::ChaosArgs),
    /// A worker process for `crash` (records completions durably) or, with --report, for
    /// `drain --workers` (records nothing, prints progress lines); runs until killed.
    #[command(hide = true)]
    Worker(ChildArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Postgres,
    Sqlite,
    Redis,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Redis => "redis",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub backend: BackendKind,
    /// Jobs in the run (default per workload: drain 20000, steady 10000, crash 64, fairness 10000
    /// for project A).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Handlers running at once in the worker (default 32; crash 64). Prefetch equals it.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// PostgreSQL: the server to create the run's database on (default
    /// postgres://postgres@127.0.0.1:5432/postgres). SQLite: the database to use (default: a temp
    /// file). Redis: the server (default redis://127.0.0.1:6379); keys get a fresh prefix.
    #[arg(long)]
    pub url: Option<String>,
    /// Jobs claimed ahead of free handler slots (default: equal to --concurrency).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Connection pool size of the queue backend (PostgreSQL).
    #[arg(long, default_value_t = 16)]
    pub max_conns: u32,
    /// Jobs per bulk `enqueue` call (drain, fairness).
    #[arg(long, default_value_t = 5_000)]
    pub chunk: usize,
    /// Jobs per second (steady, wake, soak; skew: the small projects' jobs).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// How long each job sleeps (default: crash 2000, fairness 1, otherwise no-op jobs).
    #[arg(long)]
    pub sleep_ms: Option<u64>,
    /// Jobs of project B (fairness).
    #[arg(long, default_value_t = 100)]
    pub b_jobs: usize,
    /// Crash: kill the first worker this long after its first jobs started.
    #[arg(long, default_value_t = 1_000)]
    pub kill_after_ms: u64,
    /// Jobs not completed this long after the last enqueue (crash: after the kill) count as lost
    /// (default: crash 60, otherwise 120).
    #[arg(long)]
    pub deadline_s: Option<u64>,
    /// Worker lease (default 8000 ms); heartbeats run at a quarter of it when it is shorter.
    #[arg(long, hide = true)]
    pub lease_ms: Option<u64>,
    /// How often workers look for expired leases (default 1000 ms).
    #[arg(long, hide = true)]
    pub rescue_ms: Option<u64>,
    /// wake, SQLite: block the doorbells (a plain file where their directory goes), so that the
    /// worker learns of jobs from its poll only, as before doorbells existed (the baseline).
    #[arg(long)]
    pub no_doorbell: bool,
    /// drain: K worker processes instead of one worker in this process.
    #[arg(long)]
    pub workers: Option<usize>,
    /// soak: how long fresh jobs arrive (default 600 s).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// skew: projects in all (one big, the rest small).
    #[arg(long, default_value_t = 1_000)]
    pub projects: usize,
}

#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Where the control plane (and its queue) lives; Redis cannot hold it.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendKind,
    /// Webhooks in the measured window.
    #[arg(long, default_value_t = 20_000)]
    pub webhooks: usize,
    /// Webhooks sent before the measured window, left out of the numbers.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// Requests in flight at once, each client on its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Repositories (one project and service each) the deliveries go round-robin over.
    #[arg(long, default_value_t = 16)]
    pub repos: usize,
    /// As for the other workloads: the PostgreSQL server to create the run's database on, or the
    /// SQLite database to use (default: a temp file).
    #[arg(long)]
    pub url: Option<String>,
    /// Connection pool size of the store (PostgreSQL; SQLite's pool is fixed).
    #[arg(long, default_value_t = 32)]
    pub max_conns: u32,
    /// `http`: the real thing. For profiling: `store` calls the store as the handler does, without
    /// HTTP, JSON or HMAC; `bad-signature` sends the same requests wrongly signed (answered 401
    /// after the HMAC check, no database work).
    #[arg(long, value_enum, default_value = "http")]
    pub mode: WebhookMode,
}

#[derive(Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Where the queue lives (`redis`: the control plane in PostgreSQL, the queue in Redis).
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendKind,
    /// Jobs in the queue: 80% finished in the run (1 in 20 of them dead), 20% waiting.
    #[arg(long, default_value_t = 25_000)]
    pub jobs: usize,
    /// Requests per view.
    #[arg(long, default_value_t = 40)]
    pub requests: usize,
    /// The PostgreSQL server to create the run's database on, or the SQLite database to use.
    #[arg(long)]
    pub url: Option<String>,
    /// Redis server for `--backend redis`; its database 7 is flushed before and after the run.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WebhookMode {
    Http,
    Store,
    BadSignature,
}

#[derive(Args, Clone, Debug)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub backend: BackendKind,
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long)]
    pub prefetch: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub max_conns: u32,
    #[arg(long)]
    pub lease_ms: Option<u64>,
    #[arg(long)]
    pub rescue_ms: Option<u64>,
    /// Record nothing; print progress lines (JSON) on stdout (`drain --workers`).
    #[arg(long)]
    pub report: bool,
    /// With --report: where to write the positions of the jobs run, one a line, on stopping.
    #[arg(long)]
    pub runs_file: Option<std::path::PathBuf>,
}

/// The load test's worker tuning: the defaults for `concurrency` (adaptive prefetch of at most
/// four times that, unless `--prefetch` caps it), optionally a shorter lease and rescue period.
pub fn worker_config(
    concurrency: usize,
    prefetch: Option<usize>,
    lease_ms: Option<u64>,
    rescue_ms: Option<u64>,
) -> WorkerConfig {
    let mut config = WorkerConfig::with_concurrency(concurrency);
    if let Some(prefetch) = prefetch {
        config.prefetch = prefetch;
    }
    if let Some(ms) = lease_ms {
        config.lease = Duration::from_millis(ms.max(4));
        config.heartbeat_every = config.heartbeat_every.min(config.lease / 4);
    }
    if let Some(ms) = rescue_ms {
        config.rescue_every = Duration::from_millis(ms.max(1));
    }
    config
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error")))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chaos(args) => match chaos::run(args).await {
            Ok(true) => return std::process::ExitCode::SUCCESS,
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Worker(args) if args.report => scale::report_worker(args).await.map(|()| None),
        Command::Worker(args) => workloads::child_worker(args).await.map(|()| None),
        Command::Drain(args) => workloads::run(workloads::Workload::Drain, args).await.map(Some),
        Command::Steady(args) => workloads::run(workloads::Workload::Steady, args).await.map(Some),
        Command::Crash(args) => workloads::run(workloads::Workload::Crash, args).await.map(Some),
        Command::Fairness(args) => workloads::run(workloads::Workload::Fairness, args).await.map(Some),
        Command::Wake(args) => workloads::run(workloads::Workload::Wake, args).await.map(Some),
        Command::Soak(args) => workloads::run(workloads::Workload::Soak, args).await.map(Some),
        Command::Skew(args) => workloads::run(workloads::Workload::Skew, args).await.map(Some),
        Command::Operators(args) => operators::run(&args)
            .await
            .map(|fields| Some(workloads::json_line("enclii", "operators", fields))),
        Command::Webhooks(args) => webhooks::run(&args).await.map(|fields| {
            let system = format!("enclii-{}", args.backend.as_str());
            Some(workloads::json_line(&system, "webhooks", fields))
        }),
    };
    match result {
        Ok(Some(line)) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
