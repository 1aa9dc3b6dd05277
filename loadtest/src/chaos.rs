//! `chaos`: the whole platform under faults. Starts the real `enclii server` binary as one API
//! process and `--workers` worker processes (`chaos_platform.rs`) on a fresh PostgreSQL database
//! (queue in the same database, or in Redis), sends a storm of signed GitHub `push` webhooks over
//! many services, builds and deploys a subset for real (`chaos_storm.rs`), probes the API every
//! 100 ms (`chaos_probe.rs`), and injects faults on a schedule (`chaos_faults.rs`): `kill -9` of
//! workers (on a clock, mid-build, mid-deploy), PostgreSQL, Redis and Docker engine restarts, and
//! a worker cut off from the database for longer than its lease (`chaos_proxy.rs`). After the
//! storm it waits for the system to drain and checks that nothing was lost or done twice
//! (`chaos_check.rs`, `chaos_deploys.rs`, `chaos_cut.rs`). Prints JSON lines on stdout, a human
//! summary on stderr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::chaos_platform::{Platform, Wiring, default_binary, free_port};
use crate::chaos_probe::{human_summary, phases, prober};
use crate::chaos_storm::{Svc, create_resources, plans, services, storm_service};
use crate::meter::round3;

pub const TOKEN: &str = "enclii_pat_chaostoken00_0123456789abcdefghijABCDEFGHIJ0123456789abc";
pub const SECRET: &str = "chaos-webhook-secret";
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const BASE_IMAGE: &str = "enclii-test/busybox:latest";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Queue {
    Postgres,
    Redis,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Where the job queue lives (the control plane is always PostgreSQL).
    #[arg(long, value_enum)]
    pub queue: Queue,
    /// Services (one repository each, five per project).
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Push deliveries sent over the storm, spread evenly over the services that are not built.
    #[arg(long, default_value_t = 2000)]
    pub deliveries: usize,
    /// Worker processes (slot 0 deploys; at least 2 so that a cut worker's jobs can move).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Length of the storm; faults are placed at fixed fractions of it.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The `enclii` binary (default: the one beside this program, else the cargo target dir's debug
    /// build, else its release one).
    #[arg(long)]
    pub enclii: Option<PathBuf>,
    /// Services whose repository is a real local git repository with a busybox httpd app: real
    /// clone, build, push, sbom, sign and a Docker deploy behind the router; the others point at a
    /// missing repository, so their pipelines fail at `clone`.
    #[arg(long, default_value_t = 2)]
    pub build_subset: usize,
    /// Seconds between two pushes to a built service (time for its pipeline to reach the deploy).
    #[arg(long, default_value_t = 15)]
    pub build_push_every: u64,
    /// How long to wait after the storm for every pipeline to end.
    #[arg(long, default_value_t = 180)]
    pub drain_seconds: u64,
    /// No faults (a baseline run).
    #[arg(long)]
    pub no_faults: bool,
    /// Leave this fault out of the schedule (repeatable), e.g. one the platform is known not to
    /// survive yet; the run and its checks are then about the others.
    #[arg(long, value_enum)]
    pub skip: Vec<crate::chaos_faults::FaultKind>,
    /// Lease of the workers, seconds (the server's default is 8); the cut lasts this plus 4 s.
    #[arg(long, default_value_t = 8)]
    pub lease_seconds: u64,
}

/// A tiny HTTP client for one server.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    pub fn new(addr: &str) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, Bytes)> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {TOKEN}"));
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })
        .await
        .context("timed out")?
    }

    pub async fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let (status, bytes) = self
            .send(method, path, &[], body.map(|b| b.to_string()), Duration::from_secs(30))
            .await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// Runs `program args…`; its stdout, or an error with its stderr.
pub fn sh(program: &str, args: &[&str], dir: Option<&Path>) -> Result<String> {
    let mut command = std::process::Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub async fn run(args: ChaosArgs) -> Result<bool> {
    let bin = args.enclii.clone().unwrap_or_else(default_binary);
    if !bin.exists() {
        bail!(
            "{} not found: `cargo build -p enclii` first or pass --enclii",
            bin.display()
        );
    }
    let run = rand::random::<u32>();
    let db = format!("chaos_{run:08x}");
    let dir = std::env::temp_dir().join(format!("enclii-chaos-{run:08x}"));
    std::fs::create_dir_all(&dir)?;
    crate::chaos_deploys::ensure_base_image(&dir).context("the Docker engine is needed (source .ci/infra.sh)")?;
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    let redis_db = match args.queue {
        Queue::Redis => Some(crate::chaos_check::free_redis_db().await?),
        Queue::Postgres => None,
    };
    eprintln!(
        "chaos: run {run:08x}: database {db}, queue {:?}{}, logs in {}",
        args.queue,
        redis_db.map(|d| format!(" (Redis db {d})")).unwrap_or_default(),
        dir.display()
    );
    let result = run_in(&args, &bin, &db, &dir, redis_db, run).await;
    let passed = result.as_ref().is_ok_and(|ok| *ok);
    // Clean up whatever happened; a failed run's control plane stays for a look (.ci/run's sweep
    // drops `chaos_*` databases).
    if !passed {
        eprintln!("chaos: database {db} kept; drop it with: psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE {db}'");
    } else if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
    if let Some(n) = redis_db {
        let _ = sh("redis-cli", &["-n", &n.to_string(), "flushdb"], None);
    }
    let projects: BTreeSet<String> = (0..args.services.max(1))
        .map(|k| crate::chaos_storm::project_name(run, k))
        .collect();
    match crate::chaos_deploys::clean_up(&projects) {
        Ok(n) => eprintln!("chaos: removed the run's {n} containers and its release images"),
        Err(e) => eprintln!("chaos: cleaning up the run's containers failed: {e:#}"),
    }
    if passed {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("chaos: server logs kept in {}", dir.display());
    }
    result
}

async fn run_in(args: &ChaosArgs, bin: &Path, db: &str, dir: &Path, redis_db: Option<u32>, run: u32) -> Result<bool> {
    let env: Vec<(String, String)> = [
        ("ENCLII_MASTER_KEY", enclii_store::MasterKey::generate().to_base64()),
        ("ENCLII_BOOTSTRAP_TOKEN", TOKEN.into()),
        ("ENCLII_GITHUB_WEBHOOK_SECRET", SECRET.into()),
        ("ENCLII_RATE_LIMIT_PER_MINUTE", "1000000".into()),
        ("ENCLII_RATE_LIMIT_BURST", "1000000".into()),
        ("ENCLII_WEBHOOK_RATE_PER_MINUTE", "1000000".into()),
        ("ENCLII_LEASE_SECONDS", args.lease_seconds.to_string()),
        ("ENCLII_REGISTRY", "127.0.0.1:5000".into()),
        ("ENCLII_REGISTRY_INSECURE", "true".into()),
        ("ENCLII_S3_ENDPOINT", "http://127.0.0.1:8014".into()),
        ("ENCLII_S3_BUCKET", format!("enclii-chaos-{run:08x}")),
        ("ENCLII_S3_ACCESS_KEY", "enclii-chaos".into()),
        ("ENCLII_S3_SECRET_KEY", "enclii-chaos-secret".into()),
        ("ENCLII_GIT_SCHEMES", "file".into()),
        ("ENCLII_DOCKER_CLI", crate::chaos_deploys::DOCKER.into()),
        ("ENCLII_DEPLOY_HEALTH_TIMEOUT_SECONDS", "30".into()),
        ("ENCLII_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let wiring = Wiring {
        database: db.to_string(),
        redis_db,
        router: free_port()?,
    };
    let mut platform = Platform::start(bin, env, dir, wiring, args.workers.max(2)).await?;
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let result = drive(args, &mut platform, &db_url, run).await;
    platform.stop().await;
    result
}

async fn drive(args: &ChaosArgs, platform: &mut Platform, db_url: &str, run: u32) -> Result<bool> {
    let http = Http::new(&platform.api_addr);
    let svcs: Vec<Arc<Svc>> = services(args.services, args.build_subset, &platform.dir, run)?
        .into_iter()
        .map(Arc::new)
        .collect();
    platform.projects = svcs.iter().map(|s| s.project.clone()).collect();
    platform.hosts = svcs
        .iter()
        .enumerate()
        .filter_map(|(k, s)| Some((s.host.clone()?, crate::chaos_storm::body_prefix(run, k))))
        .collect();
    create_resources(&http, &svcs).await?;
    eprintln!(
        "chaos: api on {}, router on {}, {} workers, {} services ({} built and deployed, a push every {} s), {} deliveries over {} s",
        platform.api_addr,
        platform.router(),
        platform.slots.len(),
        svcs.len(),
        args.build_subset.min(svcs.len()),
        args.build_push_every,
        args.deliveries,
        args.seconds
    );

    let start = Instant::now();
    let stop_storm = CancellationToken::new();
    let stop_probe = CancellationToken::new();
    let probe_task = tokio::spawn(prober(http.clone(), start, stop_probe.clone()));
    let mut storm = tokio::task::JoinSet::new();
    let plans = plans(&svcs, args.deliveries, args.seconds, args.build_push_every, run);
    for (svc, plan) in svcs.iter().zip(plans) {
        let gate = svc.built().then(|| platform.built_pushes.subscribe());
        storm.spawn(storm_service(
            http.clone(),
            svc.clone(),
            plan,
            gate,
            start,
            stop_storm.clone(),
        ));
    }
    let mut fault_log = crate::chaos_faults::run(args, platform, &http, start).await;
    let storm_end = start + Duration::from_secs(args.seconds);
    tokio::time::sleep_until(storm_end.into()).await;
    // Pushes still waiting for an answer finish (with their redeliveries); no new ones start.
    stop_storm.cancel();
    let mut pushed = Vec::new();
    while let Some(joined) = storm.join_next().await {
        pushed.extend(joined?);
    }
    let storm_s = start.elapsed().as_secs_f64();
    eprintln!(
        "chaos: storm over after {storm_s:.1} s: {} deliveries sent; draining (at most {} s)",
        pushed.len(),
        args.drain_seconds
    );
    let drained = crate::chaos_check::drain(&http, db_url, args, start).await;
    stop_probe.cancel();
    let probes = probe_task.await?;

    for line in phases(&probes, &fault_log.faults) {
        println!("{line}");
    }
    let mut checks = crate::chaos_check::checks(&http, db_url, args, &svcs, &pushed, platform.router()).await?;
    checks.push(crate::chaos_check::faults_hit(args, &fault_log));
    if let Some(restart) = &fault_log.docker_restart {
        checks.push(crate::chaos_docker::check(restart));
    }
    if !args.no_faults {
        checks.push(crate::chaos_check::hit_jobs_finished(&http, db_url, &fault_log.hit_jobs).await?);
    }
    if let Some(cut) = &mut fault_log.cut {
        // Every job has ended by now: the watcher sees the last claims at its next poll.
        if let Some(mut watcher) = cut.watcher.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut watcher)
                .await
                .is_err()
        {
            watcher.abort();
        }
        let log = platform.incarnation(cut.pid).map(|i| i.log.clone()).unwrap_or_default();
        checks.push(crate::chaos_cut::check(cut, &log));
    }
    let ok = checks.iter().all(|c| c["ok"] != json!(false));
    for c in &checks {
        println!("{}", json!({"chaos": "check", "check": c}));
    }
    let accepted = pushed.iter().filter(|p| p.accepted).count();
    let [p50, _, p99, max] = crate::meter::percentiles(pushed.iter().map(|p| p.ms).collect());
    let summary = json!({
        "chaos": "summary",
        "queue": format!("{:?}", args.queue).to_lowercase(),
        "services": svcs.len(), "workers": platform.slots.len(), "build_subset": args.build_subset,
        "storm_s": round3(storm_s), "deliveries_planned": args.deliveries,
        "built_pushes": pushed.iter().filter(|p| svcs[p.service].built()).count(),
        "deliveries_sent": pushed.len(), "accepted": accepted,
        "webhook_p50_ms": p50, "webhook_p99_ms": p99, "webhook_max_ms": max,
        "not_accepted": pushed.len() - accepted,
        "redelivered": pushed.iter().filter(|p| p.tries > 1).count(),
        "drained_after_s": drained,
        "faults": fault_log.faults.len(),
        "worker_processes_started": platform.incarnations.len(),
        "elapsed_s": round3(start.elapsed().as_secs_f64()),
        "ok": ok,
    });
    println!("{summary}");
    human_summary(&summary, &fault_log.faults, &probes, &checks);
    Ok(ok)
}
