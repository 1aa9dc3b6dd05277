use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use enclii_queue::{Backend, CancelOutcome, NewJob, ProjectLimits};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ApiError;
use crate::metrics::DepthGauges;

/// Largest request body accepted (bytes).
const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    backend: Arc<dyn Backend>,
    metrics: PrometheusHandle,
    gauges: Arc<DepthGauges>,
    /// Serve `/v1` routes (the api role); worker and scheduler roles expose health and metrics only.
    api: bool,
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, metrics: PrometheusHandle, api: bool) -> Self {
        Self {
            backend,
            metrics,
            gauges: Arc::default(),
            api,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    if state.api {
        router = router
            .route("/v1/jobs", post(enqueue))
            .route("/v1/jobs/{id}", get(job))
            .route("/v1/jobs/{id}/cancel", post(cancel))
            .route("/v1/jobs/{id}/retry", post(retry))
            .route("/v1/pipelines/{id}", get(pipeline))
            .route("/v1/queue/stats", get(stats))
            .route("/v1/projects/{project}/limits", put(set_limits));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// `Json<T>` whose rejections are problem+json with the reason and a hint.
pub struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                    "unsupported_media_type",
                    "the request body must be JSON",
                    "send the header `Content-Type: application/json`",
                ),
                JsonRejection::JsonDataError(e) => {
                    ApiError::bad_request("invalid_body", e.body_text(), "fix the named field and send again")
                }
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::bad_request("malformed_json", e.body_text(), "the body is not valid JSON")
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
                }
                other => ApiError::bad_request(
                    "invalid_body",
                    other.body_text(),
                    format!("bodies are limited to {BODY_LIMIT} bytes of JSON"),
                ),
            }),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.backend.ping().await?;
    Ok(Json(json!({"status": "ready", "queue": state.backend.name()})))
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Err(e) = state.gauges.refresh(state.backend.as_ref()).await {
        tracing::warn!(error = %e, "queue depth unavailable for this scrape");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueRequest {
    kind: String,
    project: String,
    #[serde(default)]
    payload: serde_json::Value,
    run_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
    priority: Option<i16>,
}

#[derive(Serialize)]
struct EnqueueResponse {
    id: i64,
    duplicate: bool,
}

async fn enqueue(
    State(state): State<AppState>,
    Body(req): Body<EnqueueRequest>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let payload = if req.payload.is_null() { json!({}) } else { req.payload };
    let policy = enclii_domain::jobs::validate(&req.kind, &payload).map_err(|e| {
        ApiError::bad_request(
            "invalid_job",
            e.to_string(),
            "see the job kinds and their payloads in ARCHITECTURE.md",
        )
    })?;
    let mut job = NewJob::new(req.kind, req.project, payload).with_policy(policy);
    job.run_at = req.run_at;
    job.unique_key = req.unique_key;
    if let Some(priority) = req.priority {
        job = job.with_priority(priority);
    }
    let enqueued = state.backend.enqueue(vec![job]).await?.remove(0);
    let status = if enqueued.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(EnqueueResponse {
            id: enqueued.id,
            duplicate: enqueued.duplicate,
        }),
    ))
}

async fn job(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<enclii_queue::JobRecord>, ApiError> {
    state
        .backend
        .job(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("job {id} does not exist (it may have been pruned)")))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<serde_json::Value>, ApiError> {
    let outcome = match state.backend.cancel(id).await? {
        CancelOutcome::Cancelled => json!({"id": id, "result": "cancelled"}),
        CancelOutcome::Requested => json!({"id": id, "result": "cancel_requested"}),
        CancelOutcome::AlreadyFinished(s) => json!({"id": id, "result": "already_finished", "state": s}),
    };
    Ok(Json(outcome))
}

async fn retry(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<serde_json::Value>, ApiError> {
    state.backend.retry(id).await?;
    Ok(Json(json!({"id": id, "result": "available"})))
}

async fn pipeline(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<enclii_queue::PipelineRecord>, ApiError> {
    state
        .backend
        .pipeline(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("pipeline {id} does not exist")))
}

async fn stats(State(state): State<AppState>) -> Result<Json<enclii_queue::QueueStats>, ApiError> {
    Ok(Json(state.backend.stats().await?))
}

async fn set_limits(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Body(limits): Body<ProjectLimits>,
) -> Result<Json<ProjectLimits>, ApiError> {
    state.backend.set_project_limits(&project, limits).await?;
    Ok(Json(limits))
}
