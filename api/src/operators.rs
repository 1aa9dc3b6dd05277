//! The operators' queue views and controls: jobs by state (dead jobs), throughput and latency,
//! worker heartbeats, per-project limits and pauses — and their live form as Server-Sent Events
//! (`/v1/queue/stream`, `/v1/pipelines/{id}/stream`), which the dashboard watches.
//!
//! Live views are snapshots taken every [`WATCH_EVERY`] and sent only when they changed: every API
//! process can serve them from the shared database and queue, with no fan-out channel to keep.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::views;
use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use enclii_queue::{JobFilter, JobRecord, JobState};
use enclii_store::{QueueControl, WorkerRecord};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path, Query};
use crate::state::{AppState, Snapshot, find_pipeline};

/// How often a live view is re-read.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// Most jobs one listing returns.
const MAX_LIST: usize = 500;
/// Finished jobs read for the throughput view (its window is cut short beyond this many).
const MAX_THROUGHPUT_SAMPLE: usize = 20_000;
/// A worker that has not beaten for this long is shown as lost; after [`FORGET_WORKERS_MS`] it goes.
const WORKER_ALIVE_MS: i64 = 30_000;
const FORGET_WORKERS_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Comma-separated states (`pending,scheduled,available,running,completed,dead,cancelled`).
    state: Option<String>,
    kind: Option<String>,
    project: Option<String>,
    /// At most this many, newest first (default 50, at most 500).
    limit: Option<usize>,
}

fn parse_states(states: Option<&str>) -> Result<Vec<JobState>, ApiError> {
    let Some(states) = states.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    states
        .split(',')
        .map(|s| {
            s.trim().parse::<JobState>().map_err(|_| {
                let known: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(
                    "invalid_query",
                    format!("state: `{s}` is not a job state"),
                    format!("use one or more of {}", known.join(", ")),
                )
            })
        })
        .collect()
}

/// Jobs by state, kind and project, newest first: dead jobs to retry, running ones to cancel.
#[utoipa::path(get, path = "/v1/queue/jobs", tag = "queue", params(JobsQuery),
    responses((status = 200, body = serde_json::Value, description = "job records, newest first")))]
pub async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Vec<JobRecord>>, ApiError> {
    principal.require(Permission::Read, query.project.as_deref())?;
    let filter = JobFilter {
        states: parse_states(query.state.as_deref())?,
        kind: query.kind,
        project: query.project,
        finished_after: None,
        limit: query.limit.unwrap_or(50).clamp(1, MAX_LIST),
    };
    Ok(Json(state.backend.list_jobs(&filter).await?))
}

/// One minute of finished jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ThroughputBucket {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub completed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Jobs that needed more than one attempt.
    pub retried: u64,
    /// 95th percentile of run time (last attempt start → finish), seconds.
    pub run_p95_seconds: Option<f64>,
    /// 95th percentile of start latency (due → last attempt start), seconds.
    pub start_p95_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Throughput {
    #[schema(value_type = i64, minimum = 1, maximum = 180)]
    pub minutes: u32,
    /// Oldest first; minutes without finished jobs are present with zero counts.
    pub buckets: Vec<ThroughputBucket>,
    pub run_p50_seconds: Option<f64>,
    pub run_p95_seconds: Option<f64>,
    pub start_p50_seconds: Option<f64>,
    pub start_p95_seconds: Option<f64>,
    /// More jobs finished in the window than were read: counts are a lower bound.
    pub truncated: bool,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// Buckets finished jobs by minute over the last `minutes` before `now`.
pub fn throughput(jobs: &[JobRecord], minutes: u32, now: DateTime<Utc>, truncated: bool) -> Throughput {
    let start_minute = now.timestamp() / 60 - i64::from(minutes) + 1;
    let mut buckets: Vec<ThroughputBucket> = (0..i64::from(minutes))
        .map(|i| ThroughputBucket {
            minute: DateTime::from_timestamp((start_minute + i) * 60, 0).unwrap_or(now),
            ..Default::default()
        })
        .collect();
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); buckets.len()];
    let (mut runs, mut starts) = (Vec::new(), Vec::new());
    for job in jobs {
        let Some(finished) = job.finished_at else { continue };
        let Ok(i) = usize::try_from(finished.timestamp() / 60 - start_minute) else {
            continue;
        };
        let Some(bucket) = buckets.get_mut(i) else { continue };
        match job.state {
            JobState::Completed => bucket.completed += 1,
            JobState::Dead => bucket.dead += 1,
            JobState::Cancelled => bucket.cancelled += 1,
            _ => continue,
        }
        bucket.retried += u64::from(job.attempt > 1);
        if let Some(attempted) = job.attempted_at {
            let run = seconds(attempted, finished);
            let start = seconds(job.run_at, attempted);
            samples[i].0.push(run);
            samples[i].1.push(start);
            runs.push(run);
            starts.push(start);
        }
    }
    let sort = |v: &mut Vec<f64>| v.sort_unstable_by(f64::total_cmp);
    for (bucket, (mut run, mut start)) in buckets.iter_mut().zip(samples) {
        sort(&mut run);
        sort(&mut start);
        bucket.run_p95_seconds = percentile(&run, 0.95);
        bucket.start_p95_seconds = percentile(&start, 0.95);
    }
    sort(&mut runs);
    sort(&mut starts);
    Throughput {
        minutes,
        buckets,
        run_p50_seconds: percentile(&runs, 0.5),
        run_p95_seconds: percentile(&runs, 0.95),
        start_p50_seconds: percentile(&starts, 0.5),
        start_p95_seconds: percentile(&starts, 0.95),
        truncated,
    }
}

async fn read_throughput(state: &AppState, minutes: u32) -> Result<Throughput, ApiError> {
    let now = Utc::now();
    let filter = JobFilter {
        states: vec![JobState::Completed, JobState::Dead, JobState::Cancelled],
        finished_after: Some(now - chrono::Duration::minutes(i64::from(minutes))),
        limit: MAX_THROUGHPUT_SAMPLE,
        ..Default::default()
    };
    let jobs = state.backend.list_jobs(&filter).await?;
    let truncated = jobs.len() == MAX_THROUGHPUT_SAMPLE;
    Ok(throughput(&jobs, minutes, now, truncated))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThroughputQuery {
    /// The window in minutes (default 15, at most 180).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_u32)]
    minutes: Option<u32>,
}

/// Jobs finished per minute, retries, and run and start latency percentiles.
#[utoipa::path(get, path = "/v1/queue/throughput", tag = "queue", params(ThroughputQuery),
    responses((status = 200, body = Throughput)))]
pub async fn get_throughput(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ThroughputQuery>,
) -> Result<Json<Throughput>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Json(
        read_throughput(&state, query.minutes.unwrap_or(15).clamp(1, 180)).await?,
    ))
}

/// A worker process, from its heartbeats, with the jobs it runs now.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub kinds: Vec<String>,
    pub concurrency: i64,
    /// Jobs it holds a lease on now.
    pub running: u64,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// `alive`, `lost` (no heartbeat for 30 s: its leases will expire and its jobs rerun) or `stopped`.
    pub status: &'static str,
    /// The job kinds it cannot run, each with the reason and what to set to run it, e.g.
    /// `{"build": "no Docker engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST"}`.
    pub unavailable: BTreeMap<String, String>,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Whether a worker beat within [`WORKER_ALIVE_MS`] of `now` and has not shut down.
pub(crate) fn is_alive(worker: &WorkerRecord, now: i64) -> bool {
    worker.stopped_at.is_none() && now - worker.last_seen <= WORKER_ALIVE_MS
}

/// The workers seen in the last hour (older ones are forgotten), with the time they were read at.
pub(crate) async fn recent_workers(state: &AppState) -> Result<(i64, Vec<WorkerRecord>), ApiError> {
    let now = Utc::now().timestamp_millis();
    Ok((now, state.store.workers(now - FORGET_WORKERS_MS).await?))
}

async fn read_workers(state: &AppState) -> Result<Vec<WorkerView>, ApiError> {
    let (now, records) = recent_workers(state).await?;
    let running_jobs = state
        .backend
        .list_jobs(&JobFilter {
            states: vec![JobState::Running],
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let mut running: HashMap<&str, u64> = HashMap::new();
    for job in &running_jobs {
        if let Some(worker) = &job.worker {
            *running.entry(worker.as_str()).or_default() += 1;
        }
    }
    Ok(records
        .into_iter()
        .map(|w| WorkerView {
            running: running.get(w.id.as_str()).copied().unwrap_or(0),
            kinds: serde_json::from_str(&w.kinds).unwrap_or_default(),
            unavailable: serde_json::from_str(&w.unavailable).unwrap_or_default(),
            status: if w.stopped_at.is_some() {
                "stopped"
            } else if is_alive(&w, now) {
                "alive"
            } else {
                "lost"
            },
            started_at: at(w.started_at),
            last_seen: at(w.last_seen),
            id: w.id,
            host: w.host,
            pid: w.pid,
            concurrency: w.concurrency,
        })
        .collect())
}

/// Worker processes and their heartbeats (seen in the last hour).
#[utoipa::path(get, path = "/v1/queue/workers", tag = "queue", responses((status = 200, body = [WorkerView])))]
pub async fn list_workers(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Json(read_workers(&state).await?))
}

/// Per-project queue limits and pauses.
#[utoipa::path(get, path = "/v1/queue/controls", tag = "queue", responses((status = 200, body = [views::QueueControl])))]
pub async fn list_controls(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<views::QueueControl>>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Json(views::all(state.store.queue_controls().await?)))
}

/// Hands a changed control to the queue, which enforces it at the next claim.
async fn enforce(state: &AppState, control: QueueControl) -> Result<Json<views::QueueControl>, ApiError> {
    state
        .backend
        .set_project_limits(&control.project, control.effective())
        .await?;
    Ok(Json(control.into()))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Jobs of the project running at once (build concurrency); `null`: unlimited.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_u32)]
    max_running: Option<u32>,
    /// Jobs started per minute; `null`: unlimited.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_u32)]
    jobs_per_minute: Option<u32>,
}

/// Per-project limits the queue enforces at claim time (a paused project stays paused).
#[utoipa::path(put, path = "/v1/projects/{project}/limits", tag = "queue",
    params(("project" = String, Path, description = "Project slug")), request_body = LimitsBody,
    responses((status = 200, body = views::QueueControl)))]
pub async fn set_limits(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(limits): Body<LimitsBody>,
) -> Result<Json<views::QueueControl>, ApiError> {
    principal.require(Permission::Govern, Some(&project))?;
    state.store.project(&project).await?;
    let control = state
        .store
        .set_queue_limits(&principal.subject, &project, limits.max_running, limits.jobs_per_minute)
        .await?;
    enforce(&state, control).await
}

async fn set_paused(
    state: &AppState,
    principal: &Principal,
    project: &str,
    paused: bool,
) -> Result<Json<views::QueueControl>, ApiError> {
    principal.require(Permission::Govern, Some(project))?;
    state.store.project(project).await?;
    let control = state
        .store
        .set_queue_paused(&principal.subject, project, paused)
        .await?;
    enforce(state, control).await
}

/// Pauses a project's queue: no job of it starts until resumed (running jobs finish; new jobs
/// are accepted and wait).
#[utoipa::path(post, path = "/v1/projects/{project}/queue/pause", tag = "queue",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = views::QueueControl)))]
pub async fn pause(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Result<Json<views::QueueControl>, ApiError> {
    set_paused(&state, &principal, &project, true).await
}

/// Resumes a paused project's queue under its limits.
#[utoipa::path(post, path = "/v1/projects/{project}/queue/resume", tag = "queue",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = views::QueueControl)))]
pub async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Result<Json<views::QueueControl>, ApiError> {
    set_paused(&state, &principal, &project, false).await
}

fn problem_event(e: &ApiError) -> Event {
    Event::default()
        .event("problem")
        .data(json!({"detail": e.to_string()}).to_string())
}

/// Sends `produce()`'s value as a `snapshot` event whenever it changes, until it says it is final.
fn watch<F, Fut>(produce: F) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(serde_json::Value, bool), ApiError>> + Send,
{
    struct Watch {
        last: Option<serde_json::Value>,
        /// The problem last reported: the same one is not sent again every read.
        problem: Option<String>,
        over: bool,
        first: bool,
    }
    let initial = Watch {
        last: None,
        problem: None,
        over: false,
        first: true,
    };
    let stream = futures::stream::unfold((initial, produce), |(mut w, produce)| async move {
        if w.over {
            return None;
        }
        loop {
            if !w.first {
                tokio::time::sleep(WATCH_EVERY).await;
            }
            w.first = false;
            let event = match produce().await {
                Ok((value, last)) => {
                    w.over = last;
                    w.problem = None;
                    if w.last.as_ref() == Some(&value) && !last {
                        continue;
                    }
                    let event = Event::default().event("snapshot").data(value.to_string());
                    w.last = Some(value);
                    event
                }
                // What it watches is gone (a pruned pipeline): nothing more will come.
                Err(e @ ApiError::NotFound(_)) => {
                    w.over = true;
                    problem_event(&e)
                }
                // A failed read is reported (once while it lasts) and retried: the view goes on.
                Err(e) => {
                    let detail = e.to_string();
                    if w.problem.as_deref() == Some(detail.as_str()) {
                        continue;
                    }
                    w.problem = Some(detail);
                    problem_event(&e)
                }
            };
            return Some((Ok(event), (w, produce)));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Everything the operators' queue view shows, in one value.
async fn queue_snapshot(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let dead = state
        .backend
        .list_jobs(&JobFilter {
            states: vec![JobState::Dead],
            limit: 50,
            ..Default::default()
        })
        .await?;
    let active = state
        .backend
        .list_jobs(&JobFilter {
            states: vec![JobState::Running, JobState::Available, JobState::Scheduled],
            limit: 50,
            ..Default::default()
        })
        .await?;
    Ok(json!({
        "stats": state.backend.stats().await?,
        "active": active,
        "throughput": read_throughput(state, 15).await?,
        "workers": read_workers(state).await?,
        "controls": state.store.queue_controls().await?,
        "dead": dead,
    }))
}

/// How often a snapshot whose only change is workers' `last_seen` is sent anyway.
const HEARTBEAT_RESEND: Duration = Duration::from_secs(15);

/// Whether two reads differ at most in the workers' `last_seen` (a status change still counts).
fn same_but_heartbeats(a: &Result<serde_json::Value, String>, b: &Result<serde_json::Value, String>) -> bool {
    let strip = |read: &Result<serde_json::Value, String>| {
        let mut read = read.clone();
        if let Ok(snapshot) = &mut read
            && let Some(workers) = snapshot.get_mut("workers").and_then(|w| w.as_array_mut())
        {
            for worker in workers {
                if let Some(worker) = worker.as_object_mut() {
                    worker.remove("last_seen");
                }
            }
        }
        read
    };
    strip(a) == strip(b)
}

/// Subscribes to this process's queue snapshots, starting the read loop if none runs.
fn subscribe(state: &AppState) -> watch::Receiver<Snapshot> {
    state.queue_watch.subscribe(|tx| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut sent_at = tokio::time::Instant::now();
            loop {
                let read = queue_snapshot(&state).await.map_err(|e| {
                    tracing::warn!(error = %e, "queue snapshot unavailable");
                    e.to_string()
                });
                // Heartbeats move `last_seen` every few seconds: alone they are sent at most
                // every HEARTBEAT_RESEND, so an idle queue does not redraw every dashboard.
                let due = sent_at.elapsed() >= HEARTBEAT_RESEND;
                let sent = tx.send_if_modified(|old| {
                    let changed = match old.as_deref() {
                        None => true,
                        Some(old) if due => *old != read,
                        Some(old) => !same_but_heartbeats(old, &read),
                    };
                    if changed {
                        *old = Some(Arc::new(read));
                    }
                    changed
                });
                if sent {
                    sent_at = tokio::time::Instant::now();
                }
                tokio::select! {
                    () = tx.closed() => break,
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        });
    })
}

/// `snapshot` events (or `problem` ones while the queue cannot be read): the current one at
/// once (if any), then each change.
fn queue_events(state: AppState) -> impl Stream<Item = Result<Event, Infallible>> {
    let rx = subscribe(&state);
    futures::stream::unfold((state, rx, true), |(state, mut rx, mut first)| async move {
        loop {
            // A receiver of a producer that just ended (its last watcher left as this one
            // came) resubscribes, which starts a new producer (or joins the one another
            // watcher just started, whose current snapshot it then sends at once).
            if !first && rx.changed().await.is_err() {
                rx = subscribe(&state);
                first = true;
                continue;
            }
            first = false;
            let snapshot = rx.borrow_and_update().clone();
            let event = match snapshot.as_deref() {
                None => continue,
                Some(Ok(snapshot)) => Event::default().event("snapshot").data(snapshot.to_string()),
                Some(Err(detail)) => Event::default()
                    .event("problem")
                    .data(json!({ "detail": detail }).to_string()),
            };
            return Some((Ok(event), (state, rx, false)));
        }
    })
}

/// The operators' queue view, live: a `snapshot` event (`stats`, `throughput`, `workers`,
/// `controls`, `dead`, `active`: running and waiting jobs) whenever any of it changes.
#[utoipa::path(get, path = "/v1/queue/stream", tag = "queue",
    responses((status = 200, content_type = "text/event-stream", description = "`snapshot` events")))]
pub async fn queue_stream(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Sse::new(queue_events(state)).keep_alive(KeepAlive::default()))
}

/// A pipeline run, live: a `snapshot` event with the run and its steps whenever a step changes;
/// the stream ends after the run's final state.
#[utoipa::path(get, path = "/v1/pipelines/{id}/stream", tag = "queue",
    params(("id" = i64, Path, description = "Pipeline run id")),
    responses((status = 200, content_type = "text/event-stream", description = "`snapshot` events")))]
pub async fn pipeline_stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let pipeline = find_pipeline(&state, id).await?;
    principal.require_on(Permission::Read, &pipeline.project, &format!("pipeline {id}"))?;
    Ok(watch(move || {
        let state = state.clone();
        async move {
            let pipeline = find_pipeline(&state, id).await?;
            let over = pipeline.state != enclii_queue::PipelineState::Running;
            Ok((json!(pipeline), over))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(id: i64, state: JobState, attempt: u32, due: i64, started: i64, done: i64) -> JobRecord {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        JobRecord {
            id,
            kind: "build".into(),
            project: "p".into(),
            payload: json!({}),
            state,
            attempt,
            policy: Default::default(),
            run_at: t(due),
            created_at: t(due),
            attempted_at: Some(t(started)),
            finished_at: Some(t(done)),
            lease_expires_at: None,
            worker: None,
            cancel_requested: false,
            unique_key: None,
            pipeline: None,
            step: None,
            last_error: None,
        }
    }

    #[test]
    fn throughput_buckets_by_minute_with_latency_percentiles() {
        let now = DateTime::from_timestamp(600 * 60 + 30, 0).unwrap();
        let jobs = [
            finished(1, JobState::Completed, 1, 599 * 60, 599 * 60 + 2, 599 * 60 + 12),
            finished(2, JobState::Dead, 3, 600 * 60, 600 * 60 + 1, 600 * 60 + 5),
            finished(3, JobState::Completed, 1, 600 * 60, 600 * 60, 600 * 60 + 2),
            // Outside the window: ignored.
            finished(4, JobState::Completed, 1, 500 * 60, 500 * 60, 500 * 60 + 1),
        ];
        let t = throughput(&jobs, 3, now, false);
        assert_eq!(t.buckets.len(), 3);
        assert_eq!(t.buckets[0].minute.timestamp(), 598 * 60);
        assert_eq!((t.buckets[0].completed, t.buckets[0].dead), (0, 0));
        assert_eq!((t.buckets[1].completed, t.buckets[1].run_p95_seconds), (1, Some(10.0)));
        let last = &t.buckets[2];
        assert_eq!((last.completed, last.dead, last.retried), (1, 1, 1));
        assert_eq!(last.run_p95_seconds, Some(4.0));
        assert_eq!(last.start_p95_seconds, Some(1.0));
        assert_eq!(t.run_p50_seconds, Some(4.0));
        assert_eq!(t.run_p95_seconds, Some(10.0));
    }

    async fn events_of<S>(sse: Sse<S>) -> Vec<String>
    where
        S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
    {
        use axum::response::IntoResponse;
        use http_body_util::BodyExt;
        let body = sse.into_response().into_body();
        let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the stream ends")
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&bytes)
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn a_watch_reports_a_lasting_problem_once_and_ends_when_its_subject_is_gone() {
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reads.clone();
        let sse = watch(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => Ok((json!({"state": "running"}), false)),
                    1 | 2 => Err(ApiError::Unavailable("redis down".into())),
                    _ => Err(ApiError::NotFound("pipeline 7 does not exist".into())),
                }
            }
        });
        let events = events_of(sse).await;
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events[0].contains("event: snapshot"), "{events:?}");
        assert!(
            events[1].contains("event: problem") && events[1].contains("unavailable"),
            "the same problem is sent once while it lasts: {events:?}"
        );
        assert!(
            events[2].contains("event: problem") && events[2].contains("does not exist"),
            "{events:?}"
        );
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "no read after the end"
        );
    }

    #[test]
    fn a_zero_minute_window_has_no_buckets_and_no_percentiles() {
        let now = DateTime::from_timestamp(600 * 60, 0).unwrap();
        let jobs = [finished(1, JobState::Completed, 1, 600 * 60, 600 * 60, 600 * 60)];
        let t = throughput(&jobs, 0, now, false);
        assert!(t.buckets.is_empty());
        assert_eq!(t.run_p95_seconds, None);
    }

    #[test]
    fn heartbeats_alone_are_not_a_change_but_a_status_is() {
        let read = |last_seen: &str, status: &str| {
            Ok(json!({"stats": {"depth": []}, "workers": [{"id": "w", "last_seen": last_seen, "status": status}]}))
        };
        let first = read("2026-11-29T20:00:00Z", "alive");
        assert!(same_but_heartbeats(&first, &read("2026-11-29T20:00:05Z", "alive")));
        assert!(!same_but_heartbeats(&first, &read("2026-11-29T20:00:45Z", "lost")));
        let other = Ok(
            json!({"stats": {"depth": [1]}, "workers": [{"id": "w", "last_seen": "2026-11-29T20:00:00Z", "status": "alive"}]}),
        );
        assert!(!same_but_heartbeats(&first, &other));
    }

    #[test]
    fn states_are_parsed_with_a_hint_listing_the_known_ones() {
        assert_eq!(
            parse_states(Some("dead,running")).unwrap(),
            vec![JobState::Dead, JobState::Running]
        );
        assert!(parse_states(None).unwrap().is_empty());
        let err = parse_states(Some("dead,zombie")).unwrap_err().to_string();
        assert!(err.contains("zombie"), "{err}");
    }
}
