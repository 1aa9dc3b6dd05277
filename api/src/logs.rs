//! Job logs: what a job printed, page by page (`GET /v1/jobs/{id}/logs`) or live as Server-Sent
//! Events (`GET /v1/jobs/{id}/logs/stream`). Workers append lines to the control-plane database
//! as they run, so any API process can serve any job's log; archived copies live in S3.

use std::convert::Infallible;
use std::time::Duration;

use crate::views;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use enclii_queue::JobState;
use enclii_store::LogLine;
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::{AppState, find_job};

/// How often a live stream looks for new lines: the log tail's latency.
const POLL: Duration = Duration::from_millis(250);
const PAGE: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
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
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "queue", params(LogQuery),
    responses((status = 200, body = [views::LogLine])))]
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
#[utoipa::path(get, path = "/v1/jobs/{id}/logs/stream", tag = "queue", params(LogQuery),
    responses((status = 200, content_type = "text/event-stream", description = "`line` events, then `end`")))]
pub async fn job_log_stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    readable_job(&state, &principal, id).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(query.after).unwrap_or(0);
    let stream = futures::stream::unfold(
        Tail::Reading {
            after,
            pending: Vec::new(),
        },
        move |tail| {
            let state = state.clone();
            async move { tail.next(&state, id).await }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

enum Tail {
    Reading { after: i64, pending: Vec<LogLine> },
    Ended,
}

impl Tail {
    async fn next(self, state: &AppState, id: i64) -> Option<(Result<Event, Infallible>, Tail)> {
        let Tail::Reading { mut after, mut pending } = self else {
            return None;
        };
        loop {
            if !pending.is_empty() {
                let line = pending.remove(0);
                after = line.seq;
                let event = Event::default()
                    .event("line")
                    .id(line.seq.to_string())
                    .json_data(views::LogLine::from(line.clone()))
                    .unwrap_or_else(|_| Event::default().event("line").data(line.line.clone()));
                return Some((Ok(event), Tail::Reading { after, pending }));
            }
            // Read the job's state before the lines: a job that finished before this read has
            // written all its lines, so an empty read after it means the log is complete.
            let finished = match state.backend.job(id).await {
                Ok(Some(job)) => {
                    matches!(job.state, JobState::Completed | JobState::Dead | JobState::Cancelled).then_some(job.state)
                }
                Ok(None) => Some(JobState::Completed),
                Err(_) => None,
            };
            match state.store.read_log(id, after, PAGE).await {
                Ok(lines) if !lines.is_empty() => {
                    pending = lines;
                    continue;
                }
                Ok(_) | Err(_) => {}
            }
            if let Some(final_state) = finished {
                let data = serde_json::json!({ "job": id, "state": final_state }).to_string();
                return Some((Ok(Event::default().event("end").data(data)), Tail::Ended));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
