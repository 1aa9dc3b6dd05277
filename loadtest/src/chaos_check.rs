//! `chaos`'s end: waiting for the platform to drain, then the checks that nothing was lost or
//! done twice, read from the control-plane tables (always PostgreSQL) and the queue (its tables,
//! or the API's queue views for Redis).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::chaos::{ChaosArgs, Http, Queue, sh};
use crate::chaos_deploys::Newest;
use crate::chaos_faults::{FaultKind, FaultLog, HitJob, planned};
use crate::chaos_storm::{Pushed, Svc};

const UNFINISHED: [&str; 4] = ["pending", "scheduled", "available", "running"];

/// A Redis database no one uses (no keys), for the run's queue.
pub async fn free_redis_db() -> Result<u32> {
    for n in (8..16).rev() {
        let size = sh("redis-cli", &["-n", &n.to_string(), "dbsize"], None)?;
        if size.trim() == "0" {
            return Ok(n);
        }
    }
    bail!("no empty Redis database among 8..15")
}

/// Unfinished jobs by kind.
async fn unfinished(http: &Http, db_url: &str, queue: Queue) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    match queue {
        Queue::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db_url).await?;
            let rows = sqlx::query(
                "SELECT kind, count(*) FROM roundhouse_jobs WHERE state IN ('pending','scheduled','available','running') GROUP BY kind",
            )
            .fetch_all(&mut conn)
            .await?;
            for row in rows {
                out.insert(row.get::<String, _>(0), row.get::<i64, _>(1) as u64);
            }
            let _ = conn.close().await;
        }
        Queue::Redis => {
            let (status, stats) = http.json("GET", "/v1/queue/stats", None).await?;
            if status != 200 {
                bail!("GET /v1/queue/stats: {status} {stats}");
            }
            for row in stats["depth"].as_array().cloned().unwrap_or_default() {
                let state = row["state"].as_str().unwrap_or("");
                if UNFINISHED.contains(&state) {
                    *out.entry(row["kind"].as_str().unwrap_or("").to_string()).or_default() +=
                        row["count"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    Ok(out)
}

async fn building_releases(db_url: &str) -> Result<i64> {
    let mut conn = sqlx::PgConnection::connect(db_url).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM releases WHERE status = 'building'")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(n)
}

fn waiting_work(unfinished: &BTreeMap<String, u64>) -> u64 {
    unfinished.values().sum()
}

/// Waits until no job is left to run and no release is building; the
/// seconds since the start when that happened, or null after `--drain-seconds`.
pub async fn drain(http: &Http, db_url: &str, args: &ChaosArgs, start: Instant) -> Value {
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    let mut last = String::new();
    while Instant::now() < deadline {
        let jobs = unfinished(http, db_url, args.queue).await;
        let building = building_releases(db_url).await;
        if let (Ok(jobs), Ok(building)) = (&jobs, &building) {
            if waiting_work(jobs) == 0 && *building == 0 {
                return json!((start.elapsed().as_secs_f64() * 10.0).round() / 10.0);
            }
            let now = format!("unfinished jobs {jobs:?}, releases building {building}");
            if now != last {
                eprintln!("chaos: draining: {now}");
                last = now;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Value::Null
}

fn check(name: &str, ok: Option<bool>, detail: Value) -> Value {
    json!({"name": name, "ok": ok, "detail": detail})
}

/// Completed `push` and `deploy` jobs: (kind, project, service, commit) → (completions, claims
/// or attempts beyond the first).
async fn completed_jobs(
    http: &Http,
    db_url: &str,
    queue: Queue,
) -> Result<BTreeMap<(String, String, String, String), (u64, u64)>> {
    let mut out: BTreeMap<(String, String, String, String), (u64, u64)> = BTreeMap::new();
    let mut add = |kind: &str, project: &str, payload: &Value, reruns: u64| {
        let key = (
            kind.to_string(),
            project.to_string(),
            payload["service"].as_str().unwrap_or("").to_string(),
            payload["commit"].as_str().unwrap_or("").to_string(),
        );
        let entry = out.entry(key).or_default();
        entry.0 += 1;
        entry.1 += reruns;
    };
    match queue {
        Queue::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db_url).await?;
            let rows = sqlx::query(
                "SELECT kind, project, payload::text, claims FROM roundhouse_jobs WHERE kind IN ('push','deploy') AND state = 'completed'",
            )
            .fetch_all(&mut conn)
            .await?;
            for row in rows {
                let payload: Value = serde_json::from_str(&row.get::<String, _>(2)).unwrap_or(Value::Null);
                let claims: i32 = row.get(3);
                add(
                    &row.get::<String, _>(0),
                    &row.get::<String, _>(1),
                    &payload,
                    (claims.max(1) - 1) as u64,
                );
            }
            let _ = conn.close().await;
        }
        Queue::Redis => {
            for kind in ["push", "deploy"] {
                let path = format!("/v1/queue/jobs?state=completed&kind={kind}&limit=500");
                let (status, jobs) = http.json("GET", &path, None).await?;
                if status != 200 {
                    bail!("GET {path}: {status} {jobs}");
                }
                for job in jobs.as_array().cloned().unwrap_or_default() {
                    let attempt = job["attempt"].as_u64().unwrap_or(1);
                    add(
                        kind,
                        job["project"].as_str().unwrap_or(""),
                        &job["payload"],
                        attempt.max(1) - 1,
                    );
                }
            }
        }
    }
    Ok(out)
}

pub async fn checks(
    http: &Http,
    db_url: &str,
    args: &ChaosArgs,
    svcs: &[Arc<Svc>],
    pushed: &[Pushed],
    router: SocketAddr,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut conn = sqlx::PgConnection::connect(db_url)
        .await
        .context("reading the control plane")?;
    let deliveries: BTreeSet<String> = sqlx::query_scalar("SELECT delivery_id FROM webhook_deliveries")
        .fetch_all(&mut conn)
        .await?
        .into_iter()
        .collect();
    // (project, service, sha) → (id, status); failures by id
    let mut releases: BTreeMap<(String, String, String), (i64, String)> = BTreeMap::new();
    let mut failures: BTreeMap<i64, String> = BTreeMap::new();
    let rows = sqlx::query("SELECT project, service, git_sha, id, status, failure FROM releases")
        .fetch_all(&mut conn)
        .await?;
    for row in rows {
        if let Some(failure) = row.get::<Option<String>, _>(5) {
            failures.insert(row.get(3), failure);
        }
        releases.insert((row.get(0), row.get(1), row.get(2)), (row.get::<i64, _>(3), row.get(4)));
    }
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for (_, status) in releases.values() {
        *by_status.entry(status.clone()).or_default() += 1;
    }

    // 1. Every accepted delivery has its delivery row and its release.
    let accepted: Vec<&Pushed> = pushed.iter().filter(|p| p.accepted).collect();
    let mut missing = Vec::new();
    for p in &accepted {
        let s = &svcs[p.service];
        let has_delivery = deliveries.contains(&p.delivery);
        let has_release = releases.contains_key(&(s.project.clone(), s.name.clone(), p.sha.clone()));
        if !has_delivery || !has_release {
            missing.push(json!({"delivery": p.delivery, "service": s.name, "sha": p.sha,
                                "delivery_row": has_delivery, "release": has_release}));
        }
    }
    let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
    for p in pushed.iter().filter(|p| !p.accepted) {
        *refused.entry(p.status).or_default() += 1;
    }
    out.push(check(
        "every_accepted_delivery_has_its_release",
        Some(missing.is_empty()),
        json!({"accepted": accepted.len(), "missing": missing.len(), "first_missing": missing.iter().take(5).collect::<Vec<_>>(),
               "not_accepted_by_status": refused,
               "first_not_accepted": pushed.iter().find(|p| !p.accepted).and_then(|p| p.answer.clone()),
               "releases_by_status": by_status}),
    ));

    // 2. Every pipeline ended.
    let jobs = unfinished(http, db_url, args.queue).await?;
    let building: i64 = sqlx::query_scalar("SELECT count(*) FROM releases WHERE status = 'building'")
        .fetch_one(&mut conn)
        .await?;
    let stuck: Vec<Value> = sqlx::query(
        "SELECT service, git_sha, pipeline_id, created_at FROM releases WHERE status = 'building' ORDER BY id LIMIT 5",
    )
    .fetch_all(&mut conn)
    .await?
    .into_iter()
    .map(|r| {
        json!({"service": r.get::<String, _>(0), "sha": r.get::<String, _>(1),
               "pipeline": r.get::<Option<i64>, _>(2), "created_at_ms": r.get::<i64, _>(3)})
    })
    .collect();
    let running_pipelines: Option<i64> = match args.queue {
        Queue::Postgres => Some(
            sqlx::query_scalar(
                "SELECT count(*) FROM roundhouse_pipelines p WHERE state = 'running' AND EXISTS \
                 (SELECT 1 FROM roundhouse_jobs j WHERE j.pipeline_id = p.id \
                  AND j.state IN ('pending','scheduled','available','running'))",
            )
            .fetch_one(&mut conn)
            .await?,
        ),
        Queue::Redis => None,
    };
    // Dead jobs by kind (the newest 500 of each; exact counts on PostgreSQL), and why those
    // beyond `clone` died (the missing repositories' clones die by design).
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_dead = Vec::new();
    for kind in ["clone", "build", "push", "sbom", "sign", "deploy"] {
        let path = format!("/v1/queue/jobs?state=dead&kind={kind}&limit=500");
        let (_, jobs) = http.json("GET", &path, None).await?;
        for job in jobs.as_array().into_iter().flatten() {
            if kind != "clone" && first_dead.len() < 5 {
                first_dead.push(json!({"job": job["id"], "kind": kind, "attempt": job["attempt"],
                    "error": job["last_error"].as_str().map(|e| e.chars().take(300).collect::<String>())}));
            }
            *dead.entry(kind.to_string()).or_default() += 1;
        }
    }
    if args.queue == Queue::Postgres {
        dead = sqlx::query("SELECT kind, count(*) FROM roundhouse_jobs WHERE state = 'dead' GROUP BY kind")
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect();
    }
    out.push(check(
        "every_pipeline_ended",
        Some(waiting_work(&jobs) == 0 && building == 0 && running_pipelines.unwrap_or(0) == 0),
        json!({"unfinished_jobs_by_kind": jobs, "releases_building": building, "first_building": stuck,
               "pipelines_running_with_work_left": running_pipelines, "dead_jobs_by_kind": dead,
               "first_dead_beyond_clone": first_dead}),
    ));

    // 3. Each (service, commit) has at most one release (also a UNIQUE constraint).
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM releases GROUP BY project, service, environment, git_sha HAVING count(*) > 1) d",
    )
    .fetch_one(&mut conn)
    .await?;
    out.push(check(
        "one_release_per_service_and_commit",
        Some(dup == 0),
        json!({"duplicated": dup}),
    ));

    // 4. Each service's newest release is its newest accepted push; built services' is ready.
    let mut wrong = Vec::new();
    let mut newest_built: BTreeMap<usize, Newest> = BTreeMap::new();
    for (k, s) in svcs.iter().enumerate() {
        let Some(last) = accepted
            .iter()
            .filter(|p| p.service == k)
            .max_by(|a, b| a.sent_s.total_cmp(&b.sent_s))
        else {
            continue;
        };
        let newest = releases
            .iter()
            .filter(|((p, n, _), _)| p == &s.project && n == &s.name)
            .max_by_key(|(_, (id, _))| *id);
        let Some(((_, _, sha), (id, status))) = newest else {
            wrong.push(json!({"service": s.name, "problem": "no release"}));
            continue;
        };
        if s.built() {
            let (id, sha, status) = (*id, sha.clone(), status.clone());
            newest_built.insert(k, Newest { id, sha, status });
        }
        if sha != &last.sha {
            wrong.push(json!({"service": s.name, "newest_release": sha, "newest_push": last.sha}));
        } else if s.built() && status != "ready" {
            wrong.push(json!({"service": s.name, "newest_release": id, "status": status,
                              "failure": failures.get(id).map(|f| f.chars().take(300).collect::<String>())}));
        }
    }
    out.push(check(
        "newest_release_is_newest_push",
        Some(wrong.is_empty()),
        json!({"wrong": wrong.len(), "first_wrong": wrong.iter().take(5).collect::<Vec<_>>()}),
    ));
    let _ = conn.close().await;

    // 5. No push or deploy job completed twice for one commit; re-runs after lost leases counted.
    let done = completed_jobs(http, db_url, args.queue).await?;
    let twice: Vec<Value> = done
        .iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|((kind, p, s, c), (n, _))| json!({"kind": kind, "project": p, "service": s, "commit": c, "completed": n}))
        .collect();
    let reruns: u64 = done.values().map(|(_, r)| r).sum();
    let pushes = done.keys().filter(|(k, ..)| k == "push").count();
    let deploys = done.keys().filter(|(k, ..)| k == "deploy").count();
    out.push(check(
        "no_push_or_deploy_completed_twice",
        Some(twice.is_empty()),
        json!({"completed_push_commits": pushes, "completed_deploy_commits": deploys, "twice": twice.len(), "first_twice": twice.iter().take(5).collect::<Vec<_>>(),
               "completed_after_more_than_one_claim": reruns,
               "note": "a job claimed again after its worker was killed is a rerun, not a double completion; the job table keeps one final state per job"}),
    ));

    // 6, 7. Each built service serves its newest ready release; no orphan container.
    out.extend(crate::chaos_deploys::checks(http, router, svcs, pushed, &newest_built).await?);
    Ok(out)
}

/// Every scheduled fault happened and did what it aimed at (an aimed kill found its job, the
/// engine's replicas came back after its restart, the cut worker held jobs).
pub fn faults_hit(args: &ChaosArgs, log: &FaultLog) -> Value {
    let planned: Vec<FaultKind> = planned(args).into_iter().map(|(_, kind)| kind).collect();
    let done: Vec<FaultKind> = log.faults.iter().map(|f| f.fault).collect();
    let missed: Vec<Value> = log
        .faults
        .iter()
        .filter(|f| !f.hit)
        .map(|f| json!({"fault": f.fault, "target": f.target, "note": f.note}))
        .collect();
    let cut_held = log.cut.as_ref().map(|c| c.held.len());
    let ok = planned == done && missed.is_empty() && cut_held != Some(0);
    check(
        "every_fault_hit",
        Some(ok),
        json!({"planned": planned, "done": done.len(), "missed": missed, "cut_worker_held_jobs": cut_held}),
    )
}

/// The check `jobs_hit_by_faults_finished`: every job a fault hit while it ran (aimed kills, the
/// deploys in flight when the engine stopped) still ended well: completed, or cancelled by a
/// newer push; else (dead, or its record lost with Redis's data) what it was for is judged in the
/// control plane: the build's release ready or superseded, the deploy's deployment succeeded or
/// superseded.
pub async fn hit_jobs_finished(http: &Http, db_url: &str, hit: &[HitJob]) -> Result<Value> {
    let mut conn = sqlx::PgConnection::connect(db_url).await?;
    let mut jobs = Vec::new();
    let mut bad = 0;
    for job in hit {
        let record = match http.json("GET", &format!("/v1/jobs/{}", job.id), None).await {
            Ok((200, r)) if r["kind"] == job.kind.as_str() && r["payload"]["commit"] == job.commit.as_str() => Some(r),
            _ => None,
        };
        let release: Option<(i64, String)> =
            sqlx::query_as("SELECT id, status FROM releases WHERE project = $1 AND service = $2 AND git_sha = $3")
                .bind(&job.project)
                .bind(&job.service)
                .bind(&job.commit)
                .fetch_optional(&mut conn)
                .await?;
        let deployment: Option<(String, Option<String>)> = match &release {
            Some((id, _)) => {
                sqlx::query_as("SELECT status, detail FROM deployments WHERE release_id = $1 ORDER BY id DESC LIMIT 1")
                    .bind(id)
                    .fetch_optional(&mut conn)
                    .await?
            }
            None => None,
        };
        let release_status = release.as_ref().map(|(_, s)| s.as_str());
        // Completed or cancelled is fine; a job that died (two faults can spend a build's two
        // attempts) or was lost is judged by what it was for.
        let ok = match &record {
            Some(r) if matches!(r["state"].as_str(), Some("completed" | "cancelled")) => true,
            _ if job.kind == "deploy" => {
                matches!(
                    deployment.as_ref().map(|d| d.0.as_str()),
                    Some("succeeded" | "superseded")
                ) || release_status == Some("superseded")
            }
            _ => matches!(release_status, Some("ready" | "superseded")),
        };
        bad += usize::from(!ok);
        jobs.push(json!({"fault": job.fault, "job": job.id, "kind": job.kind, "service": job.service,
            "job_state": record.as_ref().map(|r| r["state"].clone()),
            "job_record": if record.is_some() { "found" } else { "lost with the queue's data" },
            "attempt": record.as_ref().map(|r| r["attempt"].clone()),
            "error": record.as_ref().and_then(|r| r["last_error"].as_str().map(|e| e.chars().take(300).collect::<String>())),
            "release_status": release_status, "deployment_status": deployment.as_ref().map(|d| d.0.clone()),
            "deployment_detail": deployment.and_then(|d| d.1).map(|d| d.chars().take(300).collect::<String>()), "ok": ok}));
    }
    let _ = conn.close().await;
    Ok(check(
        "jobs_hit_by_faults_finished",
        (!hit.is_empty()).then_some(bad == 0),
        json!({"jobs": jobs, "bad": bad}),
    ))
}
