//! `chaos`'s deploy side: the Docker engine as the run left it. Each built service must serve its
//! newest ready release — by the API's deployments, by the replica containers running, and by
//! the Junctions router's answer — and every Enclii-labelled container or volume of the run's
//! projects must belong to a live deployment (no orphan). Also the base image the builds start
//! from, and the clean-up of what the run left on the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::chaos::{BASE_IMAGE, Http, sh};
use crate::chaos_storm::{Pushed, Svc};

pub const DOCKER: &str = "/usr/bin/docker";
const LABEL_PROJECT: &str = "dev.enclii.project";

pub fn docker(args: &[&str]) -> Result<String> {
    sh(DOCKER, args, None)
}

/// The busybox base image the services build from (nothing can be pulled here).
pub fn ensure_base_image(dir: &Path) -> Result<()> {
    if docker(&["image", "inspect", BASE_IMAGE]).is_ok() {
        return Ok(());
    }
    let base = dir.join("base-image");
    std::fs::create_dir_all(&base)?;
    std::fs::copy("/bin/busybox", base.join("busybox")).context("copying /bin/busybox (busybox-static)")?;
    std::fs::write(
        base.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )?;
    let out = std::process::Command::new(DOCKER)
        .args(["build", "-q", "-t", BASE_IMAGE])
        .arg(&base)
        .env("DOCKER_BUILDKIT", "1")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "building {BASE_IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One container the Docker target made, by its labels.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Container {
    pub name: String,
    pub state: String,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub release: Option<i64>,
    pub role: String,
}

impl Container {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// Every container (running or not) labelled with one of `projects`.
pub fn containers(projects: &BTreeSet<String>) -> Result<Vec<Container>> {
    let mut out = Vec::new();
    for project in projects {
        let filter = format!("label={LABEL_PROJECT}={project}");
        let listing = docker(&["ps", "-a", "--no-trunc", "--filter", &filter, "--format", "{{json .}}"])?;
        for line in listing.lines().filter(|l| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line).context("docker ps --format json")?;
            // Labels come as `k=v,k=v` (the target's values hold no commas).
            let labels: BTreeMap<&str, &str> = row["Labels"]
                .as_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let label = |k: &str| {
                labels
                    .get(format!("dev.enclii.{k}").as_str())
                    .unwrap_or(&"")
                    .to_string()
            };
            out.push(Container {
                name: row["Names"].as_str().unwrap_or("").to_string(),
                state: row["State"].as_str().unwrap_or("").to_string(),
                project: label("project"),
                service: label("service"),
                environment: label("environment"),
                release: label("release").parse().ok(),
                role: label("role"),
            });
        }
    }
    Ok(out)
}

/// Every volume labelled with one of `projects`.
fn volumes(projects: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for project in projects {
        let filter = format!("label={LABEL_PROJECT}={project}");
        out.extend(
            docker(&["volume", "ls", "-q", "--filter", &filter])?
                .lines()
                .map(str::to_string),
        );
    }
    Ok(out)
}

/// Removes the run's containers, volumes and the release images the engine pulled.
pub fn clean_up(projects: &BTreeSet<String>) -> Result<usize> {
    let found = containers(projects)?;
    for c in &found {
        let _ = docker(&["rm", "-f", &c.name]);
    }
    for v in volumes(projects)? {
        let _ = docker(&["volume", "rm", "-f", &v]);
    }
    let images = docker(&["images", "--format", "{{.Repository}} {{.ID}}"])?;
    let ids: BTreeSet<&str> = images
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(repo, _)| projects.iter().any(|p| repo.contains(&format!("/{p}/"))))
        .map(|(_, id)| id)
        .collect();
    for id in ids {
        let _ = docker(&["rmi", "-f", id]);
    }
    Ok(found.len())
}

/// A built service's newest release as the control plane has it.
#[derive(Clone, Debug)]
pub struct Newest {
    pub id: i64,
    pub sha: String,
    pub status: String,
}

/// The API's deployments of one service: the newest succeeded one's release, and the unfinished.
async fn deployments(http: &Http, svc: &Svc) -> Result<(Option<i64>, Vec<Value>, usize)> {
    let path = format!(
        "/v1/projects/{}/deployments?service={}&limit=500",
        svc.project, svc.name
    );
    let (status, list) = http.json("GET", &path, None).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {list}");
    let list = list.as_array().cloned().unwrap_or_default();
    let succeeded = list
        .iter()
        .filter(|d| d["status"] == "succeeded")
        .max_by_key(|d| d["id"].as_i64().unwrap_or(0))
        .and_then(|d| d["release_id"].as_i64());
    let unfinished: Vec<Value> = list
        .iter()
        .filter(|d| matches!(d["status"].as_str(), Some("pending" | "running" | "canary")))
        .cloned()
        .collect();
    Ok((succeeded, unfinished, list.len()))
}

/// The router's answer for the service's host: status and body.
async fn through_router(router: SocketAddr, host: &str) -> (u16, String) {
    let http = Http::new(&router.to_string());
    match http
        .send("GET", "/", &[("host", host.to_string())], None, Duration::from_secs(5))
        .await
    {
        Ok((status, body)) => (status, String::from_utf8_lossy(&body).trim().to_string()),
        Err(e) => (0, format!("{e:#}")),
    }
}

/// Checks `serving_release_is_newest_ready` and `no_orphan_container`.
pub async fn checks(
    http: &Http,
    router: SocketAddr,
    svcs: &[Arc<Svc>],
    pushed: &[Pushed],
    newest: &BTreeMap<usize, Newest>,
) -> Result<Vec<Value>> {
    let projects: BTreeSet<String> = svcs.iter().map(|s| s.project.clone()).collect();
    let all = containers(&projects)?;
    let delivery_of: BTreeMap<&str, &str> = pushed.iter().map(|p| (p.sha.as_str(), p.delivery.as_str())).collect();
    let mut wrong = Vec::new();
    let mut serving = Vec::new();
    // (project, service, release) of every live deployment.
    let mut live: BTreeSet<(String, String, i64)> = BTreeSet::new();
    let mut deployments_seen = 0;
    for (k, svc) in svcs.iter().enumerate().filter(|(_, s)| s.built()) {
        let (deployed, unfinished, count) = deployments(http, svc).await?;
        deployments_seen += count;
        if let Some(release) = deployed {
            live.insert((svc.project.clone(), svc.name.clone(), release));
        }
        let running: BTreeSet<i64> = all
            .iter()
            .filter(|c| c.project == svc.project && c.service == svc.name && c.role == "replica" && c.running())
            .filter_map(|c| c.release)
            .collect();
        let host = svc.host.clone().unwrap_or_default();
        let (router_status, body) = through_router(router, &host).await;
        let newest = newest.get(&k);
        let want_body = newest.and_then(|n| delivery_of.get(n.sha.as_str()).copied());
        let row = json!({"service": svc.name, "newest_release": newest.map(|n| n.id),
            "newest_status": newest.map(|n| n.status.clone()), "deployed_release": deployed,
            "running_replicas_of": running, "router_status": router_status,
            "router_body": body.chars().take(120).collect::<String>(), "expected_body": want_body,
            "unfinished_deployments": unfinished.len()});
        let ok = newest.is_some_and(|n| {
            n.status == "ready"
                && deployed == Some(n.id)
                && running == BTreeSet::from([n.id])
                && router_status == 200
                && want_body == Some(body.as_str())
        }) && unfinished.is_empty();
        if !ok {
            wrong.push(row.clone());
        }
        serving.push(row);
    }
    let served = serving.len();
    let mut out = vec![json!({
        "name": "serving_release_is_newest_ready",
        "ok": wrong.is_empty(),
        "detail": {"built_services": served, "wrong": wrong.len(), "first_wrong": wrong.iter().take(5).collect::<Vec<_>>(),
                   "deployments": deployments_seen,
                   "how": "newest release ready; the API's newest succeeded deployment is of it; only its replicas run; the router answers its commit's body"}
    })];

    let orphans: Vec<&Container> = all
        .iter()
        .filter(|c| {
            let release = c.release.unwrap_or(-1);
            c.role != "replica" || !live.contains(&(c.project.clone(), c.service.clone(), release))
        })
        .collect();
    let orphan_volumes = volumes(&projects)?;
    out.push(json!({
        "name": "no_orphan_container",
        "ok": orphans.is_empty() && orphan_volumes.is_empty(),
        "detail": {"containers": all.len(), "orphans": orphans.len(),
                   "first_orphans": orphans.iter().take(5).collect::<Vec<_>>(),
                   "volumes": orphan_volumes.len(),
                   "how": "every container and volume labelled dev.enclii.project=<a project of this run> is a replica of a service's live (newest succeeded) deployment; the services have no volumes"}
    }));
    Ok(out)
}
