//! `chaos`'s storm: the services (projects of five), their repositories, and one sender per
//! service that pushes in order — each `before` the previous accepted `after` — through signed
//! GitHub `push` webhooks, redelivering what failed under the same delivery id as GitHub does.
//!
//! Built services (`--build-subset`) are real local git repositories with a busybox `httpd` app:
//! every push is a real commit whose `www/index.html` is the push's delivery id, so the router's
//! answer names the release it serves. They push every `--build-push-every` (15) seconds, slow
//! enough for a pipeline (~10 s: a 7 s build, then push, sbom, sign and a ~2 s deploy) to reach
//! its end between pushes (a newer push supersedes the older one).
//! The other services point at a missing repository: their pipelines fail at `clone`, cheaply,
//! and carry the webhook storm (`--deliveries` spread over them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::chaos::{BASE_IMAGE, Http, SECRET, sh};
use crate::meter::round3;

/// The app: busybox httpd on port 3000 after a second (so that a deploy lasts long enough to be
/// caught), stopped cleanly on SIGTERM (PID 1 ignores signals it has no handler for). Its build
/// takes ~7 s (`RUN sleep`, after the COPY so never cached), as a real one would: long enough
/// for a build to still run when a cut worker stops its jobs (2–6 s into the cut).
const DOCKERFILE: &str = "COPY www /www\nRUN sleep 7\n\
CMD trap 'kill $p 2>/dev/null; exit 0' TERM; sleep 1 & wait $!; httpd -f -p 3000 -h /www & p=$!; wait $p\n";

/// One service of the run.
pub struct Svc {
    pub project: String,
    pub name: String,
    pub url: String,
    /// A real repository (its directory): pushes are real commits, built and deployed.
    pub repo_dir: Option<PathBuf>,
    /// The route the router serves a built service on.
    pub host: Option<String>,
    /// The commit the first push continues from.
    pub initial: String,
}

impl Svc {
    pub fn built(&self) -> bool {
        self.repo_dir.is_some()
    }
}

/// One push delivery as the storm sent it.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub service: usize,
    pub delivery: String,
    pub sha: String,
    /// The last answer's status (0: no answer).
    pub status: u16,
    pub tries: u32,
    /// Answered 202, or 200 (already had it) to a redelivery.
    pub accepted: bool,
    pub sent_s: f64,
    /// First send → last answer, redeliveries included.
    pub ms: f64,
    pub answer: Option<String>,
}

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
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

/// The run's projects are `chaos-<run>-<nn>` (five services each): unique per run, so that
/// containers, volumes and images found by project label belong to this run only.
pub fn project_name(run: u32, k: usize) -> String {
    format!("chaos-{run:08x}-{:02}", k / 5)
}

/// How service `k`'s delivery ids, and so its pages, start: the router's answer names whose
/// replica answered.
pub fn body_prefix(run: u32, k: usize) -> String {
    format!("chaos-{run:08x}-{k:02}-")
}

pub fn services(count: usize, build_subset: usize, dir: &Path, run: u32) -> Result<Vec<Svc>> {
    let mut out = Vec::new();
    for k in 0..count.max(1) {
        let project = project_name(run, k);
        let name = format!("svc{k:02}");
        if k < build_subset {
            let repo = dir.join(format!("repo{k:02}"));
            std::fs::create_dir_all(repo.join("www"))?;
            std::fs::write(repo.join("Dockerfile"), format!("FROM {BASE_IMAGE}\n{DOCKERFILE}"))?;
            std::fs::write(repo.join("www/healthz"), "ok\n")?;
            std::fs::write(repo.join("www/index.html"), "initial\n")?;
            git(&repo, &["init", "-q"])?;
            git(&repo, &["add", "."])?;
            git(&repo, &["commit", "-q", "-m", "initial"])?;
            let initial = git(&repo, &["rev-parse", "HEAD"])?;
            out.push(Svc {
                host: Some(format!("{name}.{project}.chaos.test")),
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
                host: None,
                initial: "0".repeat(40),
            });
        }
    }
    Ok(out)
}

pub async fn create_resources(http: &Http, svcs: &[Arc<Svc>]) -> Result<()> {
    let mut projects: Vec<&str> = svcs.iter().map(|s| s.project.as_str()).collect();
    projects.dedup();
    for p in projects {
        let (status, body) = http.json("POST", "/v1/projects", Some(json!({"slug": p}))).await?;
        if status != 201 {
            bail!("creating project {p}: {status} {body}");
        }
    }
    for s in svcs {
        let mut spec = json!({
            "apiVersion": "enclii.dev/v1", "kind": "Service",
            "metadata": {"project": s.project, "environment": "prod", "name": s.name},
            "spec": {"source": {"git": {"repository": s.url, "branch": "main"}},
                     "runtime": {"ports": [3000]}}
        });
        if let Some(host) = &s.host {
            spec["spec"]["runtime"]["memory"] = json!("32Mi");
            spec["spec"]["health"] = json!({"readiness": {"httpGet": "/healthz"}});
            spec["spec"]["routes"] = json!([{"host": host}]);
        }
        let path = format!("/v1/projects/{}/services", s.project);
        let (status, body) = http.json("POST", &path, Some(spec)).await?;
        if status != 201 {
            bail!("creating service {}/{}: {status} {body}", s.project, s.name);
        }
    }
    Ok(())
}

/// When one service's pushes go out.
pub struct Plan {
    pub k: usize,
    pub count: usize,
    pub interval: Duration,
    pub offset: Duration,
    pub run: u32,
}

/// Sends one service's pushes in order on its plan until `stop`.
/// `gate` (built services): pushes wait while it is closed (false).
pub async fn storm_service(
    http: Http,
    svc: Arc<Svc>,
    plan: Plan,
    mut gate: Option<watch::Receiver<bool>>,
    start: Instant,
    stop: CancellationToken,
) -> Vec<Pushed> {
    let Plan {
        k,
        count,
        interval,
        offset,
        run,
    } = plan;
    let mut out = Vec::new();
    let mut before = svc.initial.clone();
    // Gated senders keep their interval after a closed gate instead of catching up in a burst.
    let mut not_before = start;
    for n in 0..count {
        let due = (start + offset + interval * n as u32).max(not_before);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        if let Some(gate) = &mut gate {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = gate.wait_for(|open| *open) => {}
            }
            not_before = Instant::now() + interval;
        }
        let delivery = format!("{}{n:05}", body_prefix(run, k));
        let sha = match &svc.repo_dir {
            Some(dir) => {
                let (dir, body) = (dir.clone(), delivery.clone());
                let made = tokio::task::spawn_blocking(move || {
                    std::fs::write(dir.join("www/index.html"), format!("{body}\n"))?;
                    git(&dir, &["commit", "-q", "-a", "-m", &format!("push {n}")])?;
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
        out.push(deliver(&http, &svc, k, &delivery, &before, &sha, n, start).await);
        if out.last().is_some_and(|p| p.accepted) {
            before = sha;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    http: &Http,
    svc: &Svc,
    k: usize,
    delivery: &str,
    before: &str,
    sha: &str,
    n: usize,
    start: Instant,
) -> Pushed {
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
    let headers = [
        ("x-github-event", "push".to_string()),
        ("x-github-delivery", delivery.to_string()),
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
    Pushed {
        service: k,
        delivery: delivery.to_string(),
        sha: sha.to_string(),
        status,
        tries,
        accepted,
        sent_s,
        ms: round3((start.elapsed().as_secs_f64() - sent_s) * 1000.0),
        answer: (!accepted).then_some(answer.chars().take(300).collect()),
    }
}

/// Each service's plan: built services every `build_every` until the storm stops, the others
/// share `deliveries` evenly over `seconds`, offset so that sends interleave.
pub fn plans(svcs: &[Arc<Svc>], deliveries: usize, seconds: u64, build_every: u64, run: u32) -> Vec<Plan> {
    let storm = Duration::from_secs(seconds);
    let stormers = svcs.iter().filter(|s| !s.built()).count().max(1);
    let per_stormer = deliveries.div_ceil(stormers).max(1);
    let storm_interval = storm / per_stormer as u32;
    let build_interval = Duration::from_secs(build_every.max(1));
    let mut nth_stormer = 0;
    svcs.iter()
        .enumerate()
        .map(|(k, s)| {
            if s.built() {
                // Until the storm stops: it lasts until the last fault is over too.
                Plan {
                    k,
                    count: usize::MAX,
                    interval: build_interval,
                    // Spread the built services' first pushes over the first interval.
                    offset: build_interval.mul_f64(k as f64 / svcs.len() as f64),
                    run,
                }
            } else {
                let i = nth_stormer;
                nth_stormer += 1;
                Plan {
                    k,
                    count: deliveries / stormers + usize::from(i < deliveries % stormers),
                    interval: storm_interval,
                    offset: storm_interval.mul_f64(i as f64 / stormers as f64),
                    run,
                }
            }
        })
        .collect()
}
