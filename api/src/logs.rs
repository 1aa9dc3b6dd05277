//! Job logs: what a job printed, page by page (`GET /v1/jobs/{id}/logs`) or live as Server-Sent
//! Events (`GET /v1/jobs/{id}/logs/stream`). Workers append lines to the control-plane database
//! as they run, so any API process can serve any job's log; archived copies live in S3.
//!
//! Live streams of one job share one poller per API process ([`LogTails`]): it reads the job's
//! state and new lines every [`POLL`] and publishes each batch on a `watch` channel, as the
//! operators' queue stream shares one snapshot loop. A stream behind the latest batch (it joined
//! late, resumed from an earlier line, or missed a batch while its client was slow) reads what it
//! lacks from the store itself, then follows the batches. The poller ends when its job ends or
//! its last stream leaves. A token holds at most `ClientLimits::log_streams_per_token` streams.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::views;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use enclii_queue::JobState;
use enclii_store::LogLine;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::{AppState, find_job};

/// How often a live stream looks for new lines: the log tail's latency.
const POLL: Duration = Duration::from_millis(250);
const PAGE: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this sequence number (the last `seq` seen).
    after: Option<i64>,
    /// At most this many lines (default and maximum 500).
    limit: Option<i64>,
}

async fn readable_job(state: &AppState, principal: &Principal, id: i64) -> Result<(), ApiError> {
    let job = find_job(state, id).await?;
    principal.require_on(Permission::Read, &job.project, &format!("job {id}"))?;
    Ok(())
}

/// A page of a job's log, oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "queue",
    params(("id" = i64, Path, description = "Job id"), LogQuery),
    responses((status = 200, body = [views::LogLine]),
              (status = 400, body = crate::Problem, content_type = "application/problem+json", description = "the job id or a query parameter is not a number"),
              (status = 404, body = crate::Problem, content_type = "application/problem+json")))]
pub async fn job_log(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
    Query(query): Query<LogQuery>,
) -> Result<Json<Vec<views::LogLine>>, ApiError> {
    readable_job(&state, &principal, id).await?;
    let limit = query.limit.unwrap_or(PAGE).clamp(1, PAGE);
    Ok(Json(views::all(
        state.store.read_log(id, query.after.unwrap_or(0), limit).await?,
    )))
}

/// A job's log, live: one `line` event per line (its `id` is the line's `seq`, so a reconnecting
/// client resumes with `Last-Event-ID`), then an `end` event with the job's final state.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs/stream", tag = "queue",
    params(("id" = i64, Path, description = "Job id"), LogQuery),
    responses((status = 200, content_type = "text/event-stream", description = "`line` events, then `end`"),
              (status = 400, body = crate::Problem, content_type = "application/problem+json", description = "the job id or a query parameter is not a number"),
              (status = 404, body = crate::Problem, content_type = "application/problem+json"),
              (status = 429, body = crate::Problem, content_type = "application/problem+json", description = "this token holds as many live log streams as it may")))]
pub async fn job_log_stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    readable_job(&state, &principal, id).await?;
    let slot = LogTails::hold(&state.log_tails, &principal.rate_key)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(query.after).unwrap_or(0);
    let follow = Follow {
        rx: state.log_tails.subscribe(&state, id, after),
        state,
        id,
        after,
        pending: VecDeque::new(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(Some(follow), |follow| async move { follow?.next().await });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a job's poller last read: the lines after `from` up to `to` (both sequence numbers), and
/// whether the log is complete (the job had ended before a read that found nothing new).
pub(crate) struct Batch {
    from: i64,
    to: i64,
    lines: Vec<LogLine>,
    finished: Option<JobState>,
}

type Latest = Option<Arc<Batch>>;

/// The live tails of one API process: a poller per followed job, and the streams each token
/// holds open.
pub(crate) struct LogTails {
    per_token: usize,
    pollers: Mutex<HashMap<i64, Weak<watch::Sender<Latest>>>>,
    streams: Mutex<HashMap<String, usize>>,
}

impl LogTails {
    pub(crate) fn new(per_token: usize) -> Self {
        Self {
            per_token: per_token.max(1),
            pollers: Mutex::default(),
            streams: Mutex::default(),
        }
    }

    /// Takes one of `key`'s stream slots until the returned guard drops, or refuses with `429`.
    fn hold(tails: &Arc<Self>, key: &str) -> Result<StreamSlot, ApiError> {
        let mut streams = tails.streams.lock().unwrap_or_else(|e| e.into_inner());
        let held = streams.entry(key.to_string()).or_default();
        if *held >= tails.per_token {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_secs(10),
                detail: format!(
                    "this token already follows {} job logs, as many as it may at once",
                    tails.per_token
                ),
                hint: Some(
                    "close one of its other log streams, or read the log page by page (GET /v1/jobs/{id}/logs)".into(),
                ),
            });
        }
        *held += 1;
        metrics::gauge!("enclii_log_streams").increment(1.0);
        Ok(StreamSlot {
            tails: tails.clone(),
            key: key.to_string(),
        })
    }

    /// A receiver of job `id`'s batches, from its running poller, or from a new one reading from
    /// line `after` on.
    fn subscribe(&self, state: &AppState, id: i64, after: i64) -> watch::Receiver<Latest> {
        let mut pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = pollers.get(&id).and_then(Weak::upgrade) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        pollers.insert(id, Arc::downgrade(&tx));
        tokio::spawn(poll(state.clone(), id, after, tx));
        rx
    }

    /// Forgets job `id`'s poller if it is `tx` (a newer one may have taken its place).
    fn ended(&self, id: i64, tx: &Arc<watch::Sender<Latest>>) {
        let mut pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        if pollers.get(&id).is_some_and(|w| w.as_ptr() == Arc::as_ptr(tx)) {
            pollers.remove(&id);
        }
    }
}

/// One of a token's live streams; gives its slot back when the stream is dropped.
struct StreamSlot {
    tails: Arc<LogTails>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.tails.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = streams.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                streams.remove(&self.key);
            }
        }
        metrics::gauge!("enclii_log_streams").decrement(1.0);
    }
}

/// Job `id`'s poller: publishes a batch at once (so that streams behind `cursor` catch up), then
/// each read that found lines, and a last one when the log is complete.
async fn poll(state: AppState, id: i64, mut cursor: i64, tx: Arc<watch::Sender<Latest>>) {
    metrics::gauge!("enclii_log_pollers").increment(1.0);
    // A resume point past the log's end (a stale `Last-Event-ID`) must not hide later lines from
    // the other streams of the job.
    if let Ok(last) = state.store.last_log_seq(id).await {
        cursor = cursor.min(last);
    }
    let publish = |from: i64, to: i64, lines: Vec<LogLine>, finished: Option<JobState>| {
        tx.send_replace(Some(Arc::new(Batch {
            from,
            to,
            lines,
            finished,
        })));
    };
    publish(cursor, cursor, Vec::new(), None);
    while !tx.is_closed() {
        // The job's state before its lines: a job that ended before this read has written all
        // its lines, so finding none after it means the log is complete.
        let finished = match state.backend.job(id).await {
            Ok(Some(job)) => {
                matches!(job.state, JobState::Completed | JobState::Dead | JobState::Cancelled).then_some(job.state)
            }
            Ok(None) => Some(JobState::Completed),
            Err(e) => {
                tracing::debug!(job = id, error = %e, "job state unavailable to its log stream");
                None
            }
        };
        match state.store.read_log(id, cursor, PAGE).await {
            Ok(lines) if !lines.is_empty() => {
                let from = cursor;
                cursor = lines.last().map_or(cursor, |l| l.seq);
                let more = lines.len() as i64 == PAGE || finished.is_some();
                publish(from, cursor, lines, None);
                if more {
                    continue;
                }
            }
            Ok(_) => {
                if let Some(final_state) = finished {
                    publish(cursor, cursor, Vec::new(), Some(final_state));
                    break;
                }
            }
            Err(e) => tracing::debug!(job = id, error = %e, "job log unavailable to its log stream"),
        }
        tokio::select! {
            () = tx.closed() => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    state.log_tails.ended(id, &tx);
    metrics::gauge!("enclii_log_pollers").decrement(1.0);
}

/// One client's stream: the lines after `after`, from the shared batches or, when behind them,
/// from the store.
struct Follow {
    state: AppState,
    id: i64,
    rx: watch::Receiver<Latest>,
    after: i64,
    pending: VecDeque<LogLine>,
    _slot: StreamSlot,
}

impl Follow {
    /// The next event and the stream's state after it (`None` once the `end` event is sent).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Option<Follow>)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                self.after = line.seq;
                return Some((Ok(line_event(line)), Some(self)));
            }
            let latest = self.rx.borrow_and_update().clone();
            if let Some(batch) = latest {
                if self.after < batch.from {
                    self.catch_up(batch.from).await;
                    continue;
                }
                self.pending
                    .extend(batch.lines.iter().filter(|l| l.seq > self.after).cloned());
                if !self.pending.is_empty() {
                    continue;
                }
                if let Some(final_state) = batch.finished
                    && self.after >= batch.to
                {
                    let data = serde_json::json!({ "job": self.id, "state": final_state }).to_string();
                    return Some((Ok(Event::default().event("end").data(data)), None));
                }
            }
            if self.rx.changed().await.is_err() {
                // The poller ended (its last stream left as this one joined, or its job ended
                // after this stream saw its last batch): join, or start, a current one.
                self.rx = self.state.log_tails.subscribe(&self.state, self.id, self.after);
            }
        }
    }

    /// Reads the lines this stream lacks before the shared batches (which start after `from`).
    async fn catch_up(&mut self, from: i64) {
        match self.state.store.read_log(self.id, self.after, PAGE).await {
            Ok(lines) if !lines.is_empty() => self.pending.extend(lines),
            // Nothing between: those lines were pruned; go on from the batches.
            Ok(_) => self.after = from,
            Err(e) => {
                tracing::debug!(job = self.id, error = %e, "job log unavailable to its log stream");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn line_event(line: LogLine) -> Event {
    let seq = line.seq;
    let view = views::LogLine::from(line);
    Event::default()
        .event("line")
        .id(seq.to_string())
        .json_data(&view)
        .unwrap_or_else(|_| Event::default().event("line").id(seq.to_string()).data(view.line))
}
