//! `chaos`'s faults, injected one after another on a schedule (fractions of the storm): `kill -9`
//! of a worker on a clock, `kill -9` of the worker that runs a `build` / a `deploy` right now, a
//! PostgreSQL restart, a Redis restart, a Docker engine restart, and a worker cut off from the
//! database (its proxies black-holed, `chaos_proxy.rs`) for longer than its lease.
//!
//! Which worker holds a job comes from the queue's running jobs (`GET /v1/queue/jobs`): a
//! worker's id is `<host>-<pid>-<random>`, and the pid names the slot that was spawned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::watch;

use crate::chaos::{ChaosArgs, Http, PG_ADMIN, Queue, sh};
use crate::chaos_docker::{DockerRestart, restart_docker};
use crate::chaos_platform::{Platform, pid_of_worker_id};
use crate::meter::round3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of the next worker slot in turn, whatever it runs; respawned 3 s later.
    KillWorker,
    /// `kill -9` of a worker while it runs a `build` job.
    KillMidBuild,
    /// `kill -9` of the deploying worker (slot 0) while it runs a `deploy` job.
    KillMidDeploy,
    RestartPostgres,
    /// Without persistence, as this machine's Redis runs: the queue's data is lost.
    RestartRedis,
    /// dockerd stopped (its containers with it) and started again the way it was started.
    RestartDocker,
    /// One worker's database links black-holed for lease + 4 s, then its connections dropped.
    CutWorker,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillMidBuild => "kill-mid-build",
            FaultKind::KillMidDeploy => "kill-mid-deploy",
            FaultKind::RestartPostgres => "restart-postgres",
            FaultKind::RestartRedis => "restart-redis",
            FaultKind::RestartDocker => "restart-docker",
            FaultKind::CutWorker => "cut-worker",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A fault as it happened: `start_s`..`end_s` (the action's end plus a settling window).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fault {
    pub fault: FaultKind,
    pub target: String,
    pub start_s: f64,
    pub end_s: f64,
    /// It did what it aimed at (an aimed kill found its job; a restart came back).
    pub hit: bool,
    pub note: String,
}

/// What the cut saw, for the end's check (`chaos_cut.rs`).
#[derive(Debug, Default)]
pub struct CutRecord {
    pub pid: u32,
    pub slot: usize,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Jobs the cut worker held when the cut began: id → kind; listed at `listed`.
    pub held: BTreeMap<i64, String>,
    pub listed: Option<DateTime<Utc>>,
    /// Who claimed each held job next, filled by a watcher that outlives the fault (a rescued
    /// job may wait for its retry's backoff) until the end's check.
    pub taken: Arc<Mutex<BTreeMap<i64, Taken>>>,
    pub watcher: Option<tokio::task::JoinHandle<()>>,
}

/// The next claim of a held job after the cut began.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    /// The claiming worker's pid: another worker's, or the cut one's after the cut (it claimed
    /// the job again itself); None when only the finished record was seen.
    pub pid: Option<u32>,
    pub at: DateTime<Utc>,
    /// Seen running (the claim time is this claim's); else the finished record's last claim.
    pub exact: bool,
}

#[derive(Default)]
pub struct FaultLog {
    pub faults: Vec<Fault>,
    pub cut: Option<CutRecord>,
    pub docker_restart: Option<DockerRestart>,
    /// Jobs a fault hit while they ran (aimed kills, deploys in flight at the engine restart):
    /// each must still end completed, or cancelled by a newer push.
    pub hit_jobs: Vec<HitJob>,
}

/// A job a fault hit while it ran, and what it was for (its record may be lost with Redis).
#[derive(Clone, Debug, serde::Serialize)]
pub struct HitJob {
    pub fault: FaultKind,
    pub id: i64,
    pub kind: String,
    pub project: String,
    pub service: String,
    pub commit: String,
}

/// The schedule: fractions of the storm (a fault starts no earlier than the previous one ended,
/// and the storm lasts until the last one is over). The Redis restart comes early: releases it
/// orphans are rebuilt by the scheduler's reconciler only after 60 s (`orphan_grace`).
/// The faults this run injects: the queue's schedule without those `--skip`ped (none with
/// `--no-faults`).
pub fn planned(args: &ChaosArgs) -> Vec<(f64, FaultKind)> {
    if args.no_faults {
        return Vec::new();
    }
    schedule(args.queue)
        .into_iter()
        .filter(|(_, kind)| !args.skip.contains(kind))
        .collect()
}

pub fn schedule(queue: Queue) -> Vec<(f64, FaultKind)> {
    use FaultKind::*;
    let mut plan = vec![(0.05, KillWorker), (0.12, KillMidBuild)];
    if queue == Queue::Redis {
        plan.push((0.17, RestartRedis));
    }
    plan.extend([
        (0.22, RestartPostgres),
        (0.30, CutWorker),
        (0.50, KillMidDeploy),
        // Aimed at another deploy than the one just killed: each fault gets a job of its own.
        (0.60, RestartDocker),
        (0.80, KillWorker),
    ]);
    plan
}

/// A job running now, as the queue lists it.
pub struct Running {
    pub id: i64,
    pub kind: String,
    pub pid: u32,
    pub project: String,
    pub service: String,
    pub commit: String,
    pub attempted_at: Option<DateTime<Utc>>,
}

impl Running {
    pub fn hit_by(&self, fault: FaultKind) -> HitJob {
        HitJob {
            fault,
            id: self.id,
            kind: self.kind.clone(),
            project: self.project.clone(),
            service: self.service.clone(),
            commit: self.commit.clone(),
        }
    }
}

pub async fn running_jobs(http: &Http, kind: Option<&str>) -> Vec<Running> {
    let path = match kind {
        Some(kind) => format!("/v1/queue/jobs?state=running&kind={kind}&limit=500"),
        None => "/v1/queue/jobs?state=running&limit=500".to_string(),
    };
    let Ok((200, jobs)) = http.json("GET", &path, None).await else {
        return Vec::new();
    };
    jobs.as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            Some(Running {
                id: j["id"].as_i64()?,
                kind: j["kind"].as_str()?.to_string(),
                pid: pid_of_worker_id(j["worker"].as_str()?)?,
                project: j["project"].as_str().unwrap_or("").to_string(),
                service: j["payload"]["service"].as_str().unwrap_or("").to_string(),
                commit: j["payload"]["commit"].as_str().unwrap_or("").to_string(),
                attempted_at: j["attempted_at"].as_str().and_then(|t| t.parse().ok()),
            })
        })
        .collect()
}

const SETTLE_S: f64 = 5.0;
/// How long an aimed kill waits for its kind of job to run.
const AIM_S: u64 = 45;

pub async fn run(args: &ChaosArgs, platform: &mut Platform, http: &Http, start: Instant) -> FaultLog {
    let mut log = FaultLog::default();
    let mut kills = 0usize;
    for (fraction, kind) in planned(args) {
        let due = start + Duration::from_secs_f64(args.seconds as f64 * fraction);
        tokio::time::sleep_until(due.into()).await;
        let start_s = start.elapsed().as_secs_f64();
        let (target, hit, note) = match kind {
            FaultKind::KillWorker => {
                // From slot 1: slot 0 deploys, and the mid-deploy kill is its own fault.
                let slot = (kills + 1) % platform.slots.len();
                kills += 1;
                kill_and_respawn(platform, slot, start, "on the clock").await
            }
            FaultKind::KillMidBuild | FaultKind::KillMidDeploy => {
                let job = if kind == FaultKind::KillMidBuild {
                    "build"
                } else {
                    "deploy"
                };
                let (target, hit, note, id) = aimed_kill(platform, http, job, start).await;
                log.hit_jobs.extend(id.map(|job| job.hit_by(kind)));
                (target, hit, note)
            }
            FaultKind::RestartPostgres => restart_postgres(start_s).await,
            FaultKind::RestartRedis => restart_redis(start_s).await,
            FaultKind::RestartDocker => {
                let hit_before: Vec<i64> = log.hit_jobs.iter().map(|j| j.id).collect();
                let (target, hit, note, restart) = restart_docker(platform, http, start, &hit_before).await;
                log.hit_jobs
                    .extend(restart.deploys_in_flight.iter().map(|j| j.hit_by(kind)));
                log.docker_restart = Some(restart);
                (target, hit, note)
            }
            FaultKind::CutWorker => {
                let hit_ids: Vec<i64> = log.hit_jobs.iter().map(|j| j.id).collect();
                let (target, note, record) = cut_worker(platform, http, args.lease_seconds, &hit_ids, start).await;
                log.cut = Some(record);
                (target, true, note)
            }
        };
        let fault = Fault {
            fault: kind,
            target,
            start_s: round3(start_s),
            end_s: round3(start.elapsed().as_secs_f64() + SETTLE_S),
            hit,
            note,
        };
        println!("{}", json!({"chaos": "fault", "fault": fault}));
        log.faults.push(fault);
    }
    log
}

async fn kill_and_respawn(platform: &mut Platform, slot: usize, start: Instant, why: &str) -> (String, bool, String) {
    let pid = platform.kill_worker(slot).await;
    let target = format!("worker{slot} (pid {})", pid.unwrap_or(0));
    eprintln!(
        "chaos: {:6.1}s kill -9 {target} {why}; respawn in 3 s",
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let note = match platform.spawn_worker(slot).await {
        Ok(pid) => format!("{why}; respawned as pid {pid}"),
        Err(e) => format!("{why}; respawn failed: {e:#}"),
    };
    (target, pid.is_some(), note)
}

/// Kills the worker that runs a job of `kind` as soon as one runs (polled every 100 ms).
async fn aimed_kill(
    platform: &mut Platform,
    http: &Http,
    kind: &str,
    start: Instant,
) -> (String, bool, String, Option<Running>) {
    let deadline = Instant::now() + Duration::from_secs(AIM_S);
    while Instant::now() < deadline {
        for job in running_jobs(http, Some(kind)).await {
            if let Some(slot) = platform.slot_of_pid(job.pid) {
                let why = format!("while it ran {kind} job {}", job.id);
                let (target, hit, note) = kill_and_respawn(platform, slot, start, &why).await;
                return (target, hit, note, Some(job));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let note = format!("missed: no {kind} job ran within {AIM_S} s");
    ("no worker".into(), false, note, None)
}

fn postgres_version() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/etc/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    versions.sort();
    versions.last().map_or("15".into(), |v| v.to_string())
}

async fn restart_postgres(start_s: f64) -> (String, bool, String) {
    let version = postgres_version();
    eprintln!("chaos: {start_s:6.1}s pg_ctlcluster {version} main restart");
    let result = sh("pg_ctlcluster", &[&version, "main", "restart"], None);
    let mut up = false;
    for _ in 0..300 {
        if let Ok(conn) = sqlx::PgConnection::connect(PG_ADMIN).await {
            let _ = conn.close().await;
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let note = match result {
        Ok(_) => "restarted".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    (format!("postgresql {version}/main"), up, note)
}

async fn restart_redis(start_s: f64) -> (String, bool, String) {
    eprintln!("chaos: {start_s:6.1}s redis-cli shutdown nosave; redis-server again");
    let _ = sh("redis-cli", &["shutdown", "nosave"], None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = sh(
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
    );
    let mut up = false;
    for _ in 0..100 {
        if sh("redis-cli", &["ping"], None).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let note = match started {
        Ok(_) => "restarted without persistence".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    ("redis 127.0.0.1:6379".into(), up, note)
}

/// How long the cut waits for a worker that holds a job.
const GIVE_UP_S: u64 = 90;

/// Cuts a worker off from the database for lease + 4 s: preferably one that has just started a
/// build another worker can take over (not slot 0, the only one that deploys); after 20 s any.
/// A job another fault hit already is not aimed at again (a build has two attempts). Waits up to
/// `GIVE_UP_S` for a worker that holds a job: after a Redis restart the storm can be quiet a while.
async fn cut_worker(
    platform: &mut Platform,
    http: &Http,
    lease_s: u64,
    hit: &[i64],
    start: Instant,
) -> (String, String, CutRecord) {
    let others: BTreeSet<u32> = platform.slots.iter().skip(1).filter_map(|s| s.pid()).collect();
    let (prefer_build, give_up) = (
        Instant::now() + Duration::from_secs(20),
        Instant::now() + Duration::from_secs(GIVE_UP_S),
    );
    // The worker and the jobs it holds come from one listing: a job listed a moment after the
    // choice may have ended in between, and a cut worker that holds nothing proves nothing.
    let mut chosen: Option<(u32, BTreeMap<i64, String>, DateTime<Utc>)> = None;
    while chosen.is_none() && Instant::now() < give_up {
        let listed = Utc::now();
        let jobs = running_jobs(http, None).await;
        // A build that started within the last second still runs when the worker stops its jobs.
        let fresh = |j: &&Running| {
            j.attempted_at
                .is_some_and(|at| Utc::now() - at < chrono::Duration::seconds(1))
        };
        let build = jobs
            .iter()
            .filter(fresh)
            .find(|j| j.kind == "build" && others.contains(&j.pid) && !hit.contains(&j.id));
        let any = jobs.iter().find(|j| others.contains(&j.pid));
        chosen = build.or(any.filter(|_| Instant::now() >= prefer_build)).map(|picked| {
            let held = jobs
                .iter()
                .filter(|j| j.pid == picked.pid)
                .map(|j| (j.id, j.kind.clone()))
                .collect();
            (picked.pid, held, listed)
        });
        if chosen.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (pid, held, listed) =
        chosen.unwrap_or_else(|| (others.first().copied().unwrap_or(0), BTreeMap::new(), Utc::now()));
    let slot = platform.slot_of_pid(pid).unwrap_or(1.min(platform.slots.len() - 1));
    let cut_for = Duration::from_secs(lease_s + 4);
    eprintln!(
        "chaos: {:6.1}s worker{slot} (pid {pid}) cut off from the database for {} s, holding jobs {:?}",
        start.elapsed().as_secs_f64(),
        cut_for.as_secs(),
        held
    );
    let from = Utc::now();
    // A newer push would supersede (cancel) a held build before any worker could take it over:
    // the built services hold their pushes until the held jobs are claimed again or end.
    platform.built_pushes.send_replace(false);
    for proxy in platform.slots[slot].proxies() {
        proxy.cut();
    }
    let taken = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = tokio::spawn(watch_takes(
        http.clone(),
        from,
        held.keys().copied().collect(),
        taken.clone(),
        platform.built_pushes.clone(),
    ));
    tokio::time::sleep(cut_for).await;
    for proxy in platform.slots[slot].proxies() {
        proxy.restore();
    }
    let note = format!(
        "black-holed {} s holding {} jobs {:?}",
        cut_for.as_secs(),
        held.len(),
        held
    );
    let record = CutRecord {
        pid,
        slot,
        from: Some(from),
        to: Some(Utc::now()),
        held,
        listed: Some(listed),
        taken,
        watcher: Some(watcher),
    };
    (format!("worker{slot} (pid {pid})"), note, record)
}

/// Polls the held jobs (every 150 ms, for at most 3 minutes) until each is claimed again or
/// ends; opens the built services' pushes again when all are, or after 45 s at the latest.
async fn watch_takes(
    http: Http,
    from: DateTime<Utc>,
    held: Vec<i64>,
    taken: Arc<Mutex<BTreeMap<i64, Taken>>>,
    pushes: watch::Sender<bool>,
) {
    let reopen = Instant::now() + Duration::from_secs(45);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut left = held;
    while !left.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in left {
            let Ok((200, job)) = http.json("GET", &format!("/v1/jobs/{id}"), None).await else {
                still.push(id);
                continue;
            };
            let at: Option<DateTime<Utc>> = job["attempted_at"].as_str().and_then(|t| t.parse().ok());
            let pid = job["worker"].as_str().and_then(pid_of_worker_id);
            let claimed_since = at.filter(|at| *at > from);
            let seen = match (job["state"].as_str().unwrap_or(""), claimed_since, pid) {
                ("running", Some(at), Some(pid)) => Some(Taken {
                    pid: Some(pid),
                    at,
                    exact: true,
                }),
                ("completed" | "dead" | "cancelled", Some(at), _) => Some(Taken {
                    pid: None,
                    at,
                    exact: false,
                }),
                // Finished without a claim since the cut: the cut worker's own attempt ended.
                ("completed" | "dead" | "cancelled", None, _) => None,
                _ => {
                    still.push(id);
                    None
                }
            };
            if let Some(t) = seen {
                taken.lock().expect("takes").insert(id, t);
            }
        }
        left = still;
        if left.is_empty() || Instant::now() >= reopen {
            pushes.send_replace(true);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    pushes.send_replace(true);
}
