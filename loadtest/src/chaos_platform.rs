//! `chaos`'s processes: one `enclii server --role api,scheduler` (the scheduler reconciles
//! releases a lost queue orphaned) and worker slots, each slot a
//! `--role worker` process respawned after every kill. Slot 0 runs the Docker deploy target and
//! the Junctions router (one Docker-target process per host, as the README says); the others
//! deploy nothing. Every worker reaches PostgreSQL (and Redis) through its slot's own proxy
//! (`chaos_proxy.rs`), so that one can be cut off; the API connects directly. Workers log JSON
//! lines, one file per process, so the cut's checks can read when each job stopped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncBufReadExt;

use crate::chaos::sh;
use crate::chaos_proxy::Proxy;

/// One worker process that was started: its pid (0: it did not start) and its log.
#[derive(Clone, Debug)]
pub struct Incarnation {
    pub pid: u32,
    pub log: PathBuf,
}

pub struct Slot {
    pub child: Option<tokio::process::Child>,
    pub pg: Proxy,
    pub redis: Option<Proxy>,
}

impl Slot {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        std::iter::once(&self.pg).chain(self.redis.iter())
    }
}

/// What the workers connect to; the API gets the direct addresses.
pub struct Wiring {
    pub database: String,
    /// The Redis database number when the queue is in Redis.
    pub redis_db: Option<u32>,
    /// The Junctions router's address (slot 0).
    pub router: SocketAddr,
}

pub struct Platform {
    bin: PathBuf,
    env: Vec<(String, String)>,
    pub dir: PathBuf,
    wiring: Wiring,
    api: tokio::process::Child,
    pub api_addr: String,
    pub slots: Vec<Slot>,
    pub incarnations: Vec<Incarnation>,
    /// The run's projects (their containers are the run's).
    pub projects: BTreeSet<String>,
    /// The built services' route hosts, and how their pages start (`chaos_storm::body_prefix`).
    pub hosts: Vec<(String, String)>,
    /// Open (true) while built services may push; the cut closes it (see `chaos_faults.rs`).
    pub built_pushes: tokio::sync::watch::Sender<bool>,
}

const PG: &str = "127.0.0.1:5432";
const REDIS: &str = "127.0.0.1:6379";
/// Workers: JSON lines, with each attempt's end (debug in the pool) for the cut's checks.
const WORKER_LOG: &str = "info,sqlx=warn,enclii_worker::pool=debug";

impl Platform {
    /// Starts the API and `workers` worker processes. `env` holds what every process shares.
    pub async fn start(
        bin: &Path,
        env: Vec<(String, String)>,
        dir: &Path,
        wiring: Wiring,
        workers: usize,
    ) -> Result<Platform> {
        // One image-signing key for every process: a release signed by one worker is verified
        // by the deploying one (each would otherwise generate its own in its data directory).
        let key = dir.join("cosign.key");
        let pem = sh(
            "sh",
            &[
                "-c",
                "openssl ecparam -genkey -name prime256v1 | openssl pkcs8 -topk8 -nocrypt",
            ],
            None,
        )?;
        std::fs::write(&key, format!("{pem}\n"))?;
        let mut env = env;
        env.push(("ENCLII_SIGNING_KEY".into(), key.display().to_string()));
        let mut api_env = env.clone();
        api_env.push((
            "ENCLII_DATABASE_URL".into(),
            format!("postgres://postgres@{PG}/{}", wiring.database),
        ));
        if let Some(n) = wiring.redis_db {
            api_env.push(("ENCLII_REDIS_URL".into(), format!("redis://{REDIS}/{n}")));
        }
        api_env.push(("ENCLII_DEPLOY_TARGET".into(), "none".into()));
        let (api, api_addr) =
            spawn_server(bin, &api_env, &dir.join("api"), &dir.join("api.log"), "api,scheduler").await?;
        let mut slots = Vec::new();
        for _ in 0..workers.max(1) {
            let pg = Proxy::start(PG.parse()?).await?;
            let redis = match wiring.redis_db {
                Some(_) => Some(Proxy::start(REDIS.parse()?).await?),
                None => None,
            };
            slots.push(Slot { child: None, pg, redis });
        }
        let mut platform = Platform {
            bin: bin.to_path_buf(),
            env,
            dir: dir.to_path_buf(),
            wiring,
            api,
            api_addr,
            slots,
            incarnations: Vec::new(),
            projects: BTreeSet::new(),
            hosts: Vec::new(),
            built_pushes: tokio::sync::watch::Sender::new(true),
        };
        for slot in 0..platform.slots.len() {
            platform.spawn_worker(slot).await?;
        }
        Ok(platform)
    }

    pub fn router(&self) -> SocketAddr {
        self.wiring.router
    }

    fn worker_env(&self, slot: usize) -> Vec<(String, String)> {
        let s = &self.slots[slot];
        let mut env = self.env.clone();
        env.push((
            "ENCLII_DATABASE_URL".into(),
            format!("postgres://postgres@{}/{}", s.pg.addr, self.wiring.database),
        ));
        if let (Some(proxy), Some(n)) = (&s.redis, self.wiring.redis_db) {
            env.push(("ENCLII_REDIS_URL".into(), format!("redis://{}/{n}", proxy.addr)));
        }
        if slot == 0 {
            env.push(("ENCLII_DEPLOY_TARGET".into(), "docker".into()));
            env.push(("ENCLII_ROUTER_LISTEN".into(), self.wiring.router.to_string()));
        } else {
            env.push(("ENCLII_DEPLOY_TARGET".into(), "none".into()));
        }
        env.push(("ENCLII_LOG_JSON".into(), "true".into()));
        env.push(("ENCLII_LOG".into(), WORKER_LOG.into()));
        env
    }

    /// Starts the slot's worker (its data directory is the slot's: the router table survives a
    /// kill). Retried: a respawn may meet the Docker engine or PostgreSQL restarting.
    pub async fn spawn_worker(&mut self, slot: usize) -> Result<u32> {
        let env = self.worker_env(slot);
        let data = self.dir.join(format!("worker{slot}"));
        let mut last = None;
        for _ in 0..5 {
            let n = self.incarnations.len() + 1;
            let log = self.dir.join(format!("worker{slot}-{n}.log"));
            match spawn_server(&self.bin, &env, &data, &log, "worker").await {
                Ok((child, _)) => {
                    let pid = child.id().unwrap_or(0);
                    self.incarnations.push(Incarnation { pid, log });
                    self.slots[slot].child = Some(child);
                    return Ok(pid);
                }
                Err(e) => {
                    // Counted all the same: its log file stays.
                    self.incarnations.push(Incarnation { pid: 0, log });
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        Err(last.expect("tried"))
    }

    /// `kill -9` of the slot's worker; its pid.
    pub async fn kill_worker(&mut self, slot: usize) -> Option<u32> {
        let child = self.slots[slot].child.as_mut()?;
        let pid = child.id();
        let _ = child.start_kill(); // SIGKILL
        let _ = child.wait().await;
        self.slots[slot].child = None;
        pid
    }

    /// The slot whose live worker has this pid.
    pub fn slot_of_pid(&self, pid: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.pid() == Some(pid))
    }

    pub fn incarnation(&self, pid: u32) -> Option<&Incarnation> {
        self.incarnations.iter().find(|i| i.pid == pid)
    }

    /// SIGTERM to every process, then SIGKILL to those still running after 15 s.
    pub async fn stop(mut self) {
        let children = self
            .slots
            .iter_mut()
            .filter_map(|s| s.child.as_mut())
            .chain(std::iter::once(&mut self.api));
        let mut children: Vec<&mut tokio::process::Child> = children.collect();
        for child in children.iter() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for child in children.iter_mut() {
            if tokio::time::timeout_at(deadline.into(), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// The worker's pid from its id (`<host>-<pid>-<random>`, see `Worker::new`).
pub fn pid_of_worker_id(id: &str) -> Option<u32> {
    id.rsplit('-').nth(1)?.parse().ok()
}

async fn spawn_server(
    bin: &Path,
    env: &[(String, String)],
    data: &Path,
    log: &Path,
    role: &str,
) -> Result<(tokio::process::Child, String)> {
    std::fs::create_dir_all(data)?;
    let log_file = std::fs::File::create(log)?;
    let mut command = tokio::process::Command::new(bin);
    command.args(["server", "--role", role]);
    if role.starts_with("api") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_REDIS_URL")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ENCLII_DATA_DIR", data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .with_context(|| format!("{role} did not start within 90 s; see {}", log.display()))??
        .with_context(|| format!("{role} exited at start; see {}", log.display()))?;
    // Keep its stdout drained so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = first
        .trim()
        .strip_prefix("enclii listening on http://")
        .with_context(|| format!("{role}: unexpected first line {first:?}"))?
        .to_string();
    Ok((child, addr))
}

pub fn default_binary() -> PathBuf {
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

/// A port free now on the loopback interface (for the router, which must keep its address
/// across respawns of slot 0).
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
