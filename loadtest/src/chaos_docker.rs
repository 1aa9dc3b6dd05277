//! `chaos`'s Docker engine restart, aimed at a deploy in flight: dockerd is stopped (SIGTERM; it
//! stops its containers) and started again with the same command line, detached (`setsid -f`,
//! log appended to /tmp/enclii-dockerd.log as `.ci/infra.sh` does; there is no systemd here).
//! Afterwards the run's replicas (restart policy `unless-stopped`) must run again, the routes that
//! answered before must answer again, and the deploys that were running must finish.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::chaos::{Http, sh};
use crate::chaos_deploys::{containers, docker};
use crate::chaos_faults::{Running, running_jobs};
use crate::chaos_platform::Platform;

/// What the restart saw.
#[derive(Default)]
pub struct DockerRestart {
    /// Replicas of the run running when the engine stopped.
    pub replicas_before: usize,
    /// Those not running again (nor replaced by a deploy) 20 s after the engine answered.
    pub not_back: Vec<String>,
    /// Deploy jobs running when the engine stopped: they must complete.
    pub deploys_in_flight: Vec<Running>,
    /// Route hosts the router served before (200 with the service's own page): (host, ms after
    /// the engine answered until it served it again or None, its last answer then).
    pub routes: Vec<(String, Option<u64>, String)>,
}

/// How long a deploy is waited for before the engine restarts anyway.
const AIM: Duration = Duration::from_secs(30);
const BACK_WITHIN: Duration = Duration::from_secs(20);

/// The container's published address (`docker port`), or `-`.
fn published(name: &str) -> String {
    docker(&["port", name])
        .ok()
        .and_then(|out| {
            out.lines()
                .next()
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "-".into())
}

/// The router's answer for `host`: `own` (200 with a page of the service), `200 <body>` (another
/// service's page), or the status (0: no answer).
async fn route_answer(router: &Http, host: &str, prefix: &str) -> String {
    match router
        .send("GET", "/", &[("host", host.to_string())], None, Duration::from_secs(2))
        .await
    {
        Ok((200, body)) if body.starts_with(prefix.as_bytes()) => "own".into(),
        Ok((200, body)) => format!("200 {}", String::from_utf8_lossy(&body).trim()),
        Ok((status, _)) => status.to_string(),
        Err(_) => "0".into(),
    }
}

fn dockerd() -> Option<(u32, Vec<String>)> {
    let pid = std::fs::read_to_string("/var/run/docker.pid")
        .ok()
        .or_else(|| sh("pgrep", &["-xo", "dockerd"], None).ok())
        .and_then(|p| p.trim().parse::<u32>().ok())?;
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()?
        .split(|c| *c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some((pid, argv))
}

/// Restarts the engine once a deploy (not one of `exclude`) runs, or after 30 s regardless.
pub async fn restart_docker(
    platform: &Platform,
    http: &Http,
    start: Instant,
    exclude: &[i64],
) -> (String, bool, String, DockerRestart) {
    let mut seen = DockerRestart::default();
    let Some((pid, argv)) = dockerd() else {
        return ("dockerd".into(), false, "failed: no dockerd found".into(), seen);
    };
    // Aim: a deploy in flight on the live deploying worker while a route serves (so that both
    // the retry of the deploy and the route's recovery are tested), or whatever there is at 30 s.
    let router = Http::new(&platform.router().to_string());
    let aim_until = Instant::now() + AIM;
    let mut before_status: Vec<(String, String)>;
    loop {
        seen.deploys_in_flight = running_jobs(http, Some("deploy"))
            .await
            .into_iter()
            // A job of a killed worker stays `running` until its lease is rescued: only live ones.
            .filter(|j| !exclude.contains(&j.id) && platform.slot_of_pid(j.pid).is_some())
            .collect();
        before_status = Vec::new();
        if !seen.deploys_in_flight.is_empty() || Instant::now() >= aim_until {
            for (host, prefix) in &platform.hosts {
                before_status.push((host.clone(), route_answer(&router, host, prefix).await));
            }
        }
        let serving = before_status.iter().any(|(_, answer)| answer == "own");
        if (serving && !seen.deploys_in_flight.is_empty()) || Instant::now() >= aim_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serving: Vec<(String, String)> = platform
        .hosts
        .iter()
        .filter(|(host, _)| before_status.iter().any(|(h, answer)| h == host && answer == "own"))
        .cloned()
        .collect();
    let before: Vec<String> = containers(&platform.projects)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.running())
        .map(|c| c.name)
        .collect();
    seen.replicas_before = before.len();
    // The router keeps the published ports it saw at deploy time: note whether they change.
    let ports_before: Vec<String> = before.iter().map(|n| published(n)).collect();
    eprintln!(
        "chaos: {:6.1}s dockerd (pid {pid}) stopped and started again; deploys in flight {:?}, {} replicas of the run running",
        start.elapsed().as_secs_f64(),
        seen.deploys_in_flight.iter().map(|j| j.id).collect::<Vec<_>>(),
        before.len()
    );
    let stopped_at = Instant::now();
    let _ = sh("kill", &["-TERM", &pid.to_string()], None);
    while Path::new(&format!("/proc/{pid}")).exists() && stopped_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop_s = stopped_at.elapsed().as_secs_f64();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/tmp/enclii-dockerd.log");
    let spawned = log.and_then(|log| {
        std::process::Command::new("setsid")
            .arg("-f")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
    });
    let mut up = false;
    for _ in 0..600 {
        if docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up_at = Instant::now();
    let up_s = stopped_at.elapsed().as_secs_f64();
    // Replicas come back; one that a deploy replaced meanwhile is gone, which is fine.
    let mut missing = before.clone();
    while !missing.is_empty() && up_at.elapsed() < BACK_WITHIN {
        let now: BTreeMap<String, bool> = containers(&platform.projects)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name.clone(), c.running()))
            .collect();
        missing.retain(|name| now.get(name) == Some(&false));
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    seen.not_back = missing;
    let mut waiting: Vec<(String, String)> = serving.clone();
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !waiting.is_empty() && up_at.elapsed() < BACK_WITHIN {
        let mut still = Vec::new();
        for (host, prefix) in waiting {
            let answer = route_answer(&router, &host, &prefix).await;
            if answer == "own" {
                answered.insert(host.clone(), up_at.elapsed().as_millis() as u64);
            } else {
                still.push((host.clone(), prefix));
            }
            last.insert(host, answer);
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    seen.routes = serving
        .iter()
        .map(|(h, _)| {
            (
                h.clone(),
                answered.get(h).copied(),
                last.get(h).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let ports: Vec<String> = before
        .iter()
        .zip(&ports_before)
        .map(|(name, was)| format!("{was}→{}", published(name)))
        .collect();
    let note = match spawned {
        Ok(status) if status.success() => format!(
            "stopped in {stop_s:.1} s, answering {up_s:.1} s after the stop began ({}); {} of {} replicas not back; published ports {}; router before {}; serving again {}/{}",
            argv.join(" "),
            seen.not_back.len(),
            before.len(),
            ports.join(", "),
            before_status
                .iter()
                .map(|(host, status)| format!("{}={status}", host.split('.').next().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" "),
            answered.len(),
            serving.len()
        ),
        Ok(status) => format!("setsid {} failed: {status}", argv.join(" ")),
        Err(e) => format!("starting dockerd failed: {e}"),
    };
    let hit = up && seen.not_back.is_empty();
    (format!("dockerd pid {pid}"), hit, note, seen)
}

/// The check `docker_restart_recovered`: the run's replicas run again and every route the
/// router served before the restart answers again.
pub fn check(restart: &DockerRestart) -> Value {
    let routes_ok = restart.routes.iter().all(|(_, ms, _)| ms.is_some());
    json!({
        "name": "docker_restart_recovered",
        "ok": restart.not_back.is_empty() && routes_ok,
        "detail": {"replicas_before": restart.replicas_before, "replicas_not_back": restart.not_back,
                   "routes_serving_before": restart.routes.len(),
                   "routes": restart.routes.iter().map(|(h, ms, last)| json!({"host": h, "serving_again_after_ms": ms, "last_answer": last})).collect::<Vec<_>>(),
                   "how": "replicas running when dockerd stopped run again (or were replaced by a deploy) within 20 s of the engine answering; every route the router served before answers 200 with its own service's page again within those 20 s (last_answer: own, a status, or `200 <another service's page>`)"}
    })
}
