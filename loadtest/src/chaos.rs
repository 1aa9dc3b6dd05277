//! `chaos`: the whole platform under faults. Starts the real `enclii server` binary as one API
//! process and `--workers` worker processes on a fresh PostgreSQL database (queue in the same
//! database, or in Redis), sends a steady storm of signed GitHub `push` webhooks over many
//! services (each push chaining `before` to the previous `after`), probes the API every 100 ms,
//! and injects faults on a schedule: `kill -9` of a worker (respawned), a PostgreSQL restart, a
//! Redis restart. After the storm it waits for the system to drain and checks that nothing was
//! lost or done twice (`chaos_check.rs`). Prints JSON lines on stdout, a human summary on stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;
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
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::chaos_check::{self, Pushed};
use crate::chaos_probe::{human_summary, phases, prober};
use crate::meter::round3;

pub const TOKEN: &str = "enclii_pat_chaostoken00_0123456789abcdefghijABCDEFGHIJ0123456789abc";
const SECRET: &str = "chaos-webhook-secret";
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const BASE_IMAGE: &str = "enclii-test/busybox:latest";

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
    /// Push deliveries sent over the storm, spread evenly.
    #[arg(long, default_value_t = 2000)]
    pub deliveries: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Length of the storm; faults are placed at fixed fractions of it.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The `enclii` binary (default: the one beside this program, else the cargo target dir's debug
    /// build, else its release one).
    #[arg(long)]
    pub enclii: Option<PathBuf>,
    /// Services whose repository is a real local git repository with a tiny Dockerfile (real
    /// clone, build, push, sbom, sign); the others point at a missing repository, so their
    /// pipelines fail at `clone`.
    #[arg(long, default_value_t = 0)]
    pub build_subset: usize,
    /// How long to wait after the storm for every pipeline to end.
    #[arg(long, default_value_t = 180)]
    pub drain_seconds: u64,
    /// No faults (a baseline run).
    #[arg(long)]
    pub no_faults: bool,
    /// Lease of the workers, seconds (the server's default is 8).
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
    fn new(addr: &str) -> Http {
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

/// The processes of one platform and how to start more.
struct Platform {
    bin: PathBuf,
    env: Vec<(String, String)>,
    dir: PathBuf,
    api: tokio::process::Child,
    api_addr: String,
    workers: Vec<Option<tokio::process::Child>>,
    started: usize,
}

impl Platform {
    async fn spawn(&mut self, role: &str, name: &str) -> Result<(tokio::process::Child, String)> {
        spawn_server(&self.bin, &self.env, &self.dir, role, name).await
    }

    async fn spawn_worker(&mut self, slot: usize) -> Result<u32> {
        self.started += 1;
        let name = format!("worker{slot}-{}", self.started);
        let (child, _) = self.spawn("worker", &name).await?;
        let pid = child.id().unwrap_or(0);
        self.workers[slot] = Some(child);
        Ok(pid)
    }

    async fn stop(mut self) {
        for child in self.workers.iter_mut().flatten().chain(std::iter::once(&mut self.api)) {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for child in self.workers.iter_mut().flatten().chain(std::iter::once(&mut self.api)) {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

async fn spawn_server(
    bin: &Path,
    env: &[(String, String)],
    dir: &Path,
    role: &str,
    name: &str,
) -> Result<(tokio::process::Child, String)> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = tokio::process::Command::new(bin);
    command.args(["server", "--role", role]);
    if role == "api" {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ENCLII_DATA_DIR", &data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .with_context(|| format!("{name} did not start within 90 s"))??
        .with_context(|| format!("{name} exited at start; see {}/{name}.log", dir.display()))?;
    // Keep its stdout drained so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = first
        .trim()
        .strip_prefix("enclii listening on http://")
        .with_context(|| format!("{name}: unexpected first line {first:?}"))?
        .to_string();
    Ok((child, addr))
}

fn default_binary() -> PathBuf {
    // Beside this program first (same profile, same target dir), then $CARGO_TARGET_DIR or target.
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("enclii")))
        .filter(|p| p.exists())
    {
        return beside;
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let debug = PathBuf::from(&target).join("debug/enclii");
    if debug.exists() {
        debug
    } else {
        PathBuf::from(target).join("release/enclii")
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

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let mut all = vec![
        "-c",
        "user.name=chaos",
        "-c",
        "user.email=chaos@example.com",
        "-c",
        "init.defaultBranch=main",
    ];
    all.extend_from_slice(args);
    sh("git", &all, Some(dir))
}

/// One service of the run.
pub struct Svc {
    pub project: String,
    pub name: String,
    pub url: String,
    /// A real repository (its directory): pushes are real commits.
    pub repo_dir: Option<PathBuf>,
    /// The commit the first push continues from.
    pub initial: String,
}

fn services(args: &ChaosArgs, dir: &Path) -> Result<Vec<Svc>> {
    let mut out = Vec::new();
    for k in 0..args.services.max(1) {
        let project = format!("chaos-{:02}", k / 5);
        let name = format!("svc{k:02}");
        if k < args.build_subset {
            let repo = dir.join(format!("repo{k:02}"));
            std::fs::create_dir_all(&repo)?;
            std::fs::write(
                repo.join("Dockerfile"),
                format!("FROM {BASE_IMAGE}\nCOPY app.txt /app.txt\n"),
            )?;
            std::fs::write(repo.join("app.txt"), format!("service {k}\n"))?;
            git(&repo, &["init", "-q"])?;
            git(&repo, &["add", "."])?;
            git(&repo, &["commit", "-q", "-m", "initial"])?;
            let initial = git(&repo, &["rev-parse", "HEAD"])?;
            out.push(Svc {
                project,
                name,
                url: format!("file://{}", repo.display()),
                repo_dir: Some(repo),
                initial,
            });
        } else {
            out.push(Svc {
                project,
                name,
                url: format!("file://{}/missing{k:02}", dir.display()),
                repo_dir: None,
                initial: "0".repeat(40),
            });
        }
    }
    Ok(out)
}

async fn create_resources(http: &Http, svcs: &[Arc<Svc>]) -> Result<()> {
    let mut projects: Vec<&str> = svcs.iter().map(|s| s.project.as_str()).collect();
    projects.dedup();
    for p in projects {
        let (status, body) = http.json("POST", "/v1/projects", Some(json!({"slug": p}))).await?;
        if status != 201 {
            bail!("creating project {p}: {status} {body}");
        }
    }
    for s in svcs {
        let spec = json!({
            "apiVersion": "enclii.dev/v1", "kind": "Service",
            "metadata": {"project": s.project, "environment": "prod", "name": s.name},
            "spec": {"source": {"git": {"repository": s.url, "branch": "main"}},
                     "runtime": {"ports": [3000]}}
        });
        let path = format!("/v1/projects/{}/services", s.project);
        let (status, body) = http.json("POST", &path, Some(spec)).await?;
        if status != 201 {
            bail!("creating service {}/{}: {status} {body}", s.project, s.name);
        }
    }
    Ok(())
}

/// Sends one service's pushes in order at its share of the rate until `stop`.
struct Plan {
    k: usize,
    count: usize,
    interval: Duration,
    offset: Duration,
    run: u32,
}

async fn storm_service(http: Http, svc: Arc<Svc>, plan: Plan, start: Instant, stop: CancellationToken) -> Vec<Pushed> {
    let Plan {
        k,
        count,
        interval,
        offset,
        run,
    } = plan;
    let mut out = Vec::new();
    let mut before = svc.initial.clone();
    for n in 0..count {
        let due = start + offset + interval * n as u32;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let sha = match &svc.repo_dir {
            Some(dir) => {
                let dir = dir.clone();
                let made = tokio::task::spawn_blocking(move || {
                    git(&dir, &["commit", "-q", "--allow-empty", "-m", &format!("push {n}")])?;
                    git(&dir, &["rev-parse", "HEAD"])
                })
                .await;
                match made {
                    Ok(Ok(sha)) => sha,
                    _ => continue,
                }
            }
            None => format!("{:08x}{:032x}", rand::random::<u32>(), rand::random::<u128>()),
        };
        let body = json!({
            "ref": "refs/heads/main", "before": before, "after": sha, "created": false, "deleted": false,
            "repository": {"full_name": format!("chaos/{}", svc.name), "clone_url": svc.url, "html_url": svc.url},
            "head_commit": {"id": sha, "message": format!("push {n}")}
        })
        .to_string();
        let signature = format!(
            "sha256={}",
            enclii_auth::github_signature::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes())
        );
        let delivery = format!("chaos-{run:08x}-{k:02}-{n:05}");
        let headers = [
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", delivery.clone()),
            ("x-hub-signature-256", signature),
        ];
        let sent_s = start.elapsed().as_secs_f64();
        let mut tries = 0;
        let (status, answer) = loop {
            tries += 1;
            let result = http
                .send(
                    "POST",
                    "/v1/webhooks/github",
                    &headers,
                    Some(body.clone()),
                    Duration::from_secs(10),
                )
                .await;
            let (status, answer) = match result {
                Ok((status, bytes)) => (status, String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => (0, format!("{e:#}")),
            };
            // GitHub redelivers what failed, under the same delivery id.
            let again = status == 0 || status == 429 || status >= 500;
            if !again || tries >= 20 {
                break (status, answer);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let accepted = status == 202 || (status == 200 && tries > 1);
        if accepted {
            before = sha.clone();
        }
        out.push(Pushed {
            service: k,
            delivery,
            sha,
            status,
            tries,
            accepted,
            sent_s,
            ms: round3((start.elapsed().as_secs_f64() - sent_s) * 1000.0),
            answer: (!accepted).then_some(answer.chars().take(300).collect()),
        });
    }
    out
}

/// A fault as it happened: `start_s`..`end_s` (the action's end plus a settling window).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fault {
    pub fault: String,
    pub target: String,
    pub start_s: f64,
    pub end_s: f64,
    pub note: String,
}

fn postgres_version() -> Result<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/etc/postgresql")?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    versions.sort();
    versions
        .last()
        .map(|v| v.to_string())
        .context("no cluster in /etc/postgresql")
}

async fn wait_for_postgres() {
    for _ in 0..300 {
        if let Ok(conn) = sqlx::PgConnection::connect(PG_ADMIN).await {
            let _ = conn.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SETTLE_S: f64 = 5.0;

async fn faults(args: &ChaosArgs, platform: &mut Platform, start: Instant, redis_db: Option<u32>) -> Vec<Fault> {
    if args.no_faults {
        return Vec::new();
    }
    let total = args.seconds as f64;
    let mut plan: Vec<(f64, &str)> = vec![(0.15, "kill-worker"), (0.40, "restart-postgres")];
    match args.queue {
        Queue::Redis => plan.push((0.65, "restart-redis")),
        Queue::Postgres => plan.push((0.65, "kill-worker")),
    }
    plan.push((0.85, "kill-worker"));
    let mut out = Vec::new();
    let mut kills = 0usize;
    for (fraction, kind) in plan {
        let due = start + Duration::from_secs_f64(total * fraction);
        tokio::time::sleep_until(due.into()).await;
        let start_s = start.elapsed().as_secs_f64();
        let (target, note) = match kind {
            "kill-worker" => {
                let slot = kills % platform.workers.len().max(1);
                kills += 1;
                let mut note = String::new();
                let mut target = format!("worker{slot}");
                if let Some(child) = platform.workers[slot].as_mut() {
                    let pid = child.id().unwrap_or(0);
                    target = format!("worker{slot} (pid {pid})");
                    let _ = child.start_kill(); // SIGKILL
                    let _ = child.wait().await;
                }
                eprintln!("chaos: {start_s:6.1}s kill -9 {target}; respawn in 3 s");
                tokio::time::sleep(Duration::from_secs(3)).await;
                match platform.spawn_worker(slot).await {
                    Ok(pid) => note.push_str(&format!("respawned as pid {pid}")),
                    Err(e) => note.push_str(&format!("respawn failed: {e:#}")),
                }
                (target, note)
            }
            "restart-postgres" => {
                let version = postgres_version().unwrap_or_else(|_| "15".into());
                eprintln!("chaos: {start_s:6.1}s pg_ctlcluster {version} main restart");
                let note = match sh("pg_ctlcluster", &[&version, "main", "restart"], None) {
                    Ok(_) => "restarted".to_string(),
                    Err(e) => format!("failed: {e:#}"),
                };
                wait_for_postgres().await;
                (format!("postgresql {version}/main"), note)
            }
            _ => {
                eprintln!("chaos: {start_s:6.1}s redis-cli shutdown nosave; redis-server again");
                let _ = sh("redis-cli", &["shutdown", "nosave"], None);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let note = match sh(
                    "redis-server",
                    &[
                        "--daemonize",
                        "yes",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        "6379",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    None,
                ) {
                    Ok(_) => format!("restarted without persistence (db {})", redis_db.unwrap_or(0)),
                    Err(e) => format!("failed: {e:#}"),
                };
                for _ in 0..100 {
                    if sh("redis-cli", &["ping"], None).is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ("redis 127.0.0.1:6379".to_string(), note)
            }
        };
        let end_s = start.elapsed().as_secs_f64() + SETTLE_S;
        let fault = Fault {
            fault: kind.to_string(),
            target,
            start_s: round3(start_s),
            end_s: round3(end_s),
            note,
        };
        println!("{}", json!({"chaos": "fault", "fault": fault}));
        out.push(fault);
    }
    out
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
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    let redis_db = match args.queue {
        Queue::Redis => Some(chaos_check::free_redis_db().await?),
        Queue::Postgres => None,
    };
    eprintln!(
        "chaos: run {run:08x}: database {db}, queue {:?}{}, logs in {}",
        args.queue,
        redis_db.map(|d| format!(" (Redis db {d})")).unwrap_or_default(),
        dir.display()
    );
    let result = run_in(&args, &bin, &db, &dir, redis_db, run).await;
    // Clean up whatever happened.
    if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
    if let Some(n) = redis_db {
        let _ = sh("redis-cli", &["-n", &n.to_string(), "flushdb"], None);
    }
    if result.as_ref().is_ok_and(|ok| *ok) {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("chaos: server logs kept in {}", dir.display());
    }
    result
}

async fn run_in(args: &ChaosArgs, bin: &Path, db: &str, dir: &Path, redis_db: Option<u32>, run: u32) -> Result<bool> {
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let mut env: Vec<(String, String)> = [
        ("ENCLII_DATABASE_URL", db_url.clone()),
        ("ENCLII_MASTER_KEY", enclii_store::MasterKey::generate().to_base64()),
        ("ENCLII_BOOTSTRAP_TOKEN", TOKEN.into()),
        ("ENCLII_GITHUB_WEBHOOK_SECRET", SECRET.into()),
        ("ENCLII_RATE_LIMIT_PER_MINUTE", "1000000".into()),
        ("ENCLII_RATE_LIMIT_BURST", "1000000".into()),
        ("ENCLII_WEBHOOK_RATE_PER_MINUTE", "1000000".into()),
        ("ENCLII_DEPLOY_TARGET", "none".into()),
        ("ENCLII_ROUTER_LISTEN", "127.0.0.1:0".into()),
        ("ENCLII_LEASE_SECONDS", args.lease_seconds.to_string()),
        ("ENCLII_REGISTRY", "127.0.0.1:5000".into()),
        ("ENCLII_REGISTRY_INSECURE", "true".into()),
        ("ENCLII_S3_ENDPOINT", "http://127.0.0.1:8014".into()),
        ("ENCLII_S3_BUCKET", format!("enclii-chaos-{run:08x}")),
        ("ENCLII_S3_ACCESS_KEY", "enclii-chaos".into()),
        ("ENCLII_S3_SECRET_KEY", "enclii-chaos-secret".into()),
        ("ENCLII_GIT_SCHEMES", "file".into()),
        ("ENCLII_DOCKER_CLI", "/usr/bin/docker".into()),
        ("ENCLII_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(n) = redis_db {
        env.push(("ENCLII_REDIS_URL".into(), format!("redis://127.0.0.1:6379/{n}")));
    }
    let (api, api_addr) = spawn_server(bin, &env, dir, "api", "api").await?;
    let mut platform = Platform {
        bin: bin.to_path_buf(),
        env,
        dir: dir.to_path_buf(),
        api,
        api_addr,
        workers: (0..args.workers.max(1)).map(|_| None).collect(),
        started: 0,
    };
    let result = drive(args, &mut platform, &db_url, redis_db, run).await;
    platform.stop().await;
    result
}

async fn drive(
    args: &ChaosArgs,
    platform: &mut Platform,
    db_url: &str,
    redis_db: Option<u32>,
    run: u32,
) -> Result<bool> {
    for slot in 0..platform.workers.len() {
        platform.spawn_worker(slot).await?;
    }
    let http = Http::new(&platform.api_addr);
    let svcs: Vec<Arc<Svc>> = services(args, &platform.dir)?.into_iter().map(Arc::new).collect();
    create_resources(&http, &svcs).await?;
    eprintln!(
        "chaos: api on {}, {} workers, {} services ({} building for real), {} deliveries over {} s",
        platform.api_addr,
        platform.workers.len(),
        svcs.len(),
        args.build_subset.min(svcs.len()),
        args.deliveries,
        args.seconds
    );

    let start = Instant::now();
    let stop_storm = CancellationToken::new();
    let stop_probe = CancellationToken::new();
    let probe_task = tokio::spawn(prober(http.clone(), start, stop_probe.clone()));
    let per_service = args.deliveries.div_ceil(svcs.len());
    let interval = Duration::from_secs_f64(args.seconds as f64 / per_service.max(1) as f64);
    let mut storm = tokio::task::JoinSet::new();
    for (k, svc) in svcs.iter().enumerate() {
        let count = args.deliveries / svcs.len() + usize::from(k < args.deliveries % svcs.len());
        let plan = Plan {
            k,
            count,
            interval,
            offset: interval.mul_f64(k as f64 / svcs.len() as f64),
            run,
        };
        storm.spawn(storm_service(
            http.clone(),
            svc.clone(),
            plan,
            start,
            stop_storm.clone(),
        ));
    }
    let fault_log = faults(args, platform, start, redis_db).await;
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
    let drained = chaos_check::drain(&http, db_url, args, start).await;
    stop_probe.cancel();
    let probes = probe_task.await?;

    for line in phases(&probes, &fault_log) {
        println!("{line}");
    }
    let checks = chaos_check::checks(&http, db_url, args, &svcs, &pushed).await?;
    let ok = checks.iter().all(|c| c["ok"] != json!(false));
    for c in &checks {
        println!("{}", json!({"chaos": "check", "check": c}));
    }
    let accepted = pushed.iter().filter(|p| p.accepted).count();
    let [p50, _, p99, max] = crate::meter::percentiles(pushed.iter().map(|p| p.ms).collect());
    let summary = json!({
        "chaos": "summary",
        "queue": format!("{:?}", args.queue).to_lowercase(),
        "services": svcs.len(), "workers": platform.workers.len(), "build_subset": args.build_subset,
        "storm_s": round3(storm_s), "deliveries_planned": args.deliveries, "deliveries_sent": pushed.len(), "accepted": accepted,
        "webhook_p50_ms": p50, "webhook_p99_ms": p99, "webhook_max_ms": max,
        "not_accepted": pushed.len() - accepted,
        "redelivered": pushed.iter().filter(|p| p.tries > 1).count(),
        "drained_after_s": drained,
        "faults": fault_log.len(),
        "ok": ok,
    });
    println!("{summary}");
    human_summary(&summary, &fault_log, &probes, &checks);
    Ok(ok)
}
