//! The queue's own resources: enqueue a job directly, read, cancel and retry jobs, read and
//! cancel pipeline runs, and the queue's depth (`/v1/jobs`, `/v1/pipelines`, `/v1/queue/stats`).

use crate::extract::{Body, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use enclii_queue::{CancelOutcome, NewJob};
use enclii_store::Change;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::{AppState, find_job, find_pipeline};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    kind: String,
    project: String,
    /// The kind's payload, a JSON object (`null` or absent: `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    payload: serde_json::Value,
    run_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
    #[schema(minimum = -32768, maximum = 32767)]
    priority: Option<i16>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EnqueueResponse {
    id: i64,
    duplicate: bool,
}

/// Audits an action on the queue (its effect lives in the queue, not in the store).
async fn audit_queue(state: &AppState, principal: &Principal, action: &'static str, entity: String, project: &str) {
    let change = Change {
        action,
        entity_type: "job",
        entity,
        project: Some(project),
        diff: json!({}),
    };
    if let Err(e) = state.store.audit(&principal.subject, change).await {
        tracing::error!(error = %e, action, "audit event could not be written");
    }
}

/// Enqueues one job directly (an operator's tool; pipelines come from webhooks and builds).
#[utoipa::path(post, path = "/v1/jobs", tag = "queue", request_body = EnqueueRequest,
    responses((status = 201, body = EnqueueResponse), (status = 200, body = EnqueueResponse, description = "duplicate unique key")))]
pub async fn enqueue(
    State(state): State<AppState>,
    principal: Principal,
    Body(req): Body<EnqueueRequest>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    principal.require(Permission::Govern, Some(&req.project))?;
    let payload = if req.payload.is_null() { json!({}) } else { req.payload };
    let policy = enclii_domain::jobs::validate(&req.kind, &payload).map_err(|e| {
        ApiError::bad_request(
            "invalid_job",
            e.to_string(),
            "see the job kinds and their payloads in ARCHITECTURE.md",
        )
    })?;
    let project = req.project.clone();
    let mut job = NewJob::new(req.kind, req.project, payload).with_policy(policy);
    job.run_at = req.run_at;
    // Unique keys are global in the queue: scope the caller's to their project.
    job.unique_key = req.unique_key.map(|key| format!("api:{project}:{key}"));
    if let Some(priority) = req.priority {
        job = job.with_priority(priority);
    }
    let enqueued = state.backend.enqueue(vec![job]).await?.remove(0);
    audit_queue(&state, &principal, "job.enqueue", enqueued.id.to_string(), &project).await;
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

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "queue",
    params(("id" = i64, Path, description = "Job id")), responses((status = 200, body = serde_json::Value)))]
pub async fn job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<enclii_queue::JobRecord>, ApiError> {
    let job = find_job(&state, id).await?;
    principal.require_on(Permission::Read, &job.project, &format!("job {id}"))?;
    Ok(Json(job))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "queue",
    params(("id" = i64, Path, description = "Job id")), responses((status = 200, body = serde_json::Value)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = find_job(&state, id).await?;
    principal.require_on(Permission::Deploy, &job.project, &format!("job {id}"))?;
    let cancelled = state.backend.cancel(id).await?;
    let outcome = match cancelled {
        CancelOutcome::Cancelled => json!({"id": id, "result": "cancelled"}),
        CancelOutcome::Requested => json!({"id": id, "result": "cancel_requested"}),
        CancelOutcome::AlreadyFinished(s) => json!({"id": id, "result": "already_finished", "state": s}),
    };
    audit_queue(&state, &principal, "job.cancel", id.to_string(), &job.project).await;
    // Cancelling a step cancels its run: the release it was building ends with it.
    if let Some(pipeline) = job.pipeline
        && !matches!(cancelled, CancelOutcome::AlreadyFinished(_))
        && let Some(run) = state.backend.pipeline(pipeline).await?
    {
        fail_release_of_cancelled_run(&state, &run, &principal).await;
    }
    Ok(Json(outcome))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "queue",
    params(("id" = i64, Path, description = "Job id")), responses((status = 200, body = serde_json::Value)))]
pub async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = find_job(&state, id).await?;
    principal.require_on(Permission::Deploy, &job.project, &format!("job {id}"))?;
    state.backend.retry(id).await?;
    audit_queue(&state, &principal, "job.retry", id.to_string(), &job.project).await;
    Ok(Json(json!({"id": id, "result": "available"})))
}

/// A pipeline run with the state of each step.
#[utoipa::path(get, path = "/v1/pipelines/{id}", tag = "queue",
    params(("id" = i64, Path, description = "Pipeline run id")), responses((status = 200, body = serde_json::Value)))]
pub async fn pipeline(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<enclii_queue::PipelineRecord>, ApiError> {
    let pipeline = find_pipeline(&state, id).await?;
    principal.require_on(Permission::Read, &pipeline.project, &format!("pipeline {id}"))?;
    Ok(Json(pipeline))
}

/// Cancels every unfinished step of a pipeline (running steps are asked to stop).
#[utoipa::path(post, path = "/v1/pipelines/{id}/cancel", tag = "queue",
    params(("id" = i64, Path, description = "Pipeline run id")), responses((status = 200, body = serde_json::Value)))]
pub async fn cancel_pipeline(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pipeline = find_pipeline(&state, id).await?;
    principal.require_on(Permission::Deploy, &pipeline.project, &format!("pipeline {id}"))?;
    let mut cancelled = Vec::new();
    for step in pipeline.steps.iter().filter(|s| !s.state.is_terminal()) {
        if !matches!(state.backend.cancel(step.job).await?, CancelOutcome::AlreadyFinished(_)) {
            cancelled.push(step.name.clone());
        }
    }
    let change = Change {
        action: "pipeline.cancel",
        entity_type: "pipeline",
        entity: id.to_string(),
        project: Some(&pipeline.project),
        diff: json!({"steps": cancelled}),
    };
    state.store.audit(&principal.subject, change).await?;
    fail_release_of_cancelled_run(&state, &pipeline, &principal).await;
    Ok(Json(json!({"id": id, "cancelled_steps": cancelled})))
}

/// The release a cancelled run was building ends with it (a finished release is left alone, and
/// so is a release that is not this run's: a queue that lost its data hands ids out again).
async fn fail_release_of_cancelled_run(state: &AppState, run: &enclii_queue::PipelineRecord, principal: &Principal) {
    if let Ok(Some(release)) = state.store.release_of_pipeline(run).await
        && release.status == enclii_store::ReleaseStatus::Building
    {
        let outcome = enclii_store::ReleaseOutcome {
            failure: Some(format!("cancelled by {}", principal.subject)),
            ..Default::default()
        };
        let _ = state.store.finish_release(release.id, &outcome).await;
    }
}

/// Depth per kind, project and state: platform-wide, for operators.
#[utoipa::path(get, path = "/v1/queue/stats", tag = "queue", responses((status = 200, body = serde_json::Value)))]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<enclii_queue::QueueStats>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Json(state.backend.stats().await?))
}
