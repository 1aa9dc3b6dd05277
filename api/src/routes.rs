use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use enclii_queue::{Backend, CancelOutcome, NewJob};
use enclii_store::{Change, Store};
use governor::DefaultKeyedRateLimiter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticator, Permission, Principal, RateLimit};
use crate::error::ApiError;
use crate::metrics::DepthGauges;
use crate::{control, logs, operators, runtime, timetable, webhooks};

/// Largest request body accepted (bytes).
const BODY_LIMIT: usize = 1024 * 1024;

/// What the API needs to answer requests.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Arc<Store>,
    pub(crate) backend: Arc<dyn Backend>,
    metrics: PrometheusHandle,
    gauges: Arc<DepthGauges>,
    pub(crate) auth: Arc<Authenticator>,
    /// The secret GitHub signs deliveries with; webhooks are refused without one.
    pub(crate) webhook_secret: Option<Arc<str>>,
    pub(crate) webhook_limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Serve `/v1` routes (the api role); worker and scheduler roles expose health and metrics only.
    api: bool,
    pub(crate) signatures: Option<Arc<dyn SignaturePolicy>>,
    /// The deploy target, read by the runtime routes (logs, status); `None`: they answer 503.
    pub(crate) runtime: Option<Arc<dyn enclii_deploy::Target>>,
    /// The operators' live queue view, shared by every watcher of this process.
    pub(crate) queue_watch: Arc<operators::QueueWatch>,
}

/// API settings beyond the store.
pub struct ApiConfig {
    pub oidc: Option<enclii_auth::oidc::OidcVerifier>,
    pub webhook_secret: Option<String>,
    /// Requests per token.
    pub rate_limit: RateLimit,
    /// Webhook deliveries per project.
    pub webhook_rate_limit: RateLimit,
    pub serve_api: bool,
    /// Checks a release's image signature in its registry before it deploys (the deploy policy);
    /// `None`: only the signature reference recorded by the pipeline is required.
    pub signatures: Option<Arc<dyn SignaturePolicy>>,
    /// The deploy target this process runs, for runtime logs and status (read only).
    pub runtime: Option<Arc<dyn enclii_deploy::Target>>,
}

pub use enclii_store::SignaturePolicy;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            oidc: None,
            webhook_secret: None,
            rate_limit: RateLimit::DEFAULT,
            webhook_rate_limit: RateLimit {
                per_minute: 600,
                burst: 1200,
            },
            serve_api: true,
            signatures: None,
            runtime: None,
        }
    }
}

impl AppState {
    pub fn new(store: Arc<Store>, metrics: PrometheusHandle, config: ApiConfig) -> Self {
        Self {
            backend: store.queue(),
            store,
            metrics,
            gauges: Arc::default(),
            auth: Arc::new(Authenticator::new(config.oidc, config.rate_limit)),
            webhook_secret: config.webhook_secret.map(Arc::from),
            webhook_limiter: Arc::new(config.webhook_rate_limit.limiter()),
            api: config.serve_api,
            signatures: config.signatures,
            runtime: config.runtime,
            queue_watch: Arc::default(),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Enclii Switchyard API", description = "The control plane of Enclii. Authenticate with \
        `Authorization: Bearer <token>` (a personal access token or an OIDC token). Errors are \
        `application/problem+json` with a stable `code`."),
    components(schemas(crate::Problem, crate::error::FieldError)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The `/v1` routes and their OpenAPI document, from one list.
fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(control::list_projects, control::create_project))
        .routes(routes!(
            control::get_project,
            control::update_project,
            control::delete_project
        ))
        .routes(routes!(control::list_environments, control::create_environment))
        .routes(routes!(control::update_environment))
        .routes(routes!(control::list_services, control::create_service))
        .routes(routes!(
            control::get_service,
            control::put_service,
            control::delete_service
        ))
        .routes(routes!(control::spec_versions))
        .routes(routes!(control::list_project_releases))
        .routes(routes!(control::list_releases, control::build_release))
        .routes(routes!(control::get_release))
        .routes(routes!(control::list_pipelines))
        .routes(routes!(control::list_deliveries))
        .routes(routes!(control::create_deployment))
        .routes(routes!(control::list_deployments))
        .routes(routes!(control::get_deployment))
        .routes(routes!(control::rollback))
        .routes(routes!(control::list_secrets))
        .routes(routes!(control::set_secret, control::delete_secret))
        .routes(routes!(control::list_routes, control::add_route))
        .routes(routes!(control::delete_route))
        .routes(routes!(control::list_members))
        .routes(routes!(control::put_member, control::delete_member))
        .routes(routes!(control::whoami))
        .routes(routes!(control::list_tokens, control::create_token))
        .routes(routes!(control::revoke_token))
        .routes(routes!(control::list_audit))
        .routes(routes!(runtime::service_logs))
        .routes(routes!(runtime::project_status))
        .routes(routes!(runtime::create_preview))
        .routes(routes!(timetable::run_job))
        .routes(routes!(timetable::list_job_runs))
        .routes(routes!(timetable::cost_report))
        .routes(routes!(timetable::resume_environment))
        .routes(routes!(webhooks::github))
        .routes(routes!(enqueue))
        .routes(routes!(job))
        .routes(routes!(logs::job_log))
        .routes(routes!(logs::job_log_stream))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(pipeline))
        .routes(routes!(cancel_pipeline))
        .routes(routes!(stats))
        .routes(routes!(operators::set_limits))
        .routes(routes!(operators::list_jobs))
        .routes(routes!(operators::get_throughput))
        .routes(routes!(operators::list_workers))
        .routes(routes!(operators::list_controls))
        .routes(routes!(operators::pause))
        .routes(routes!(operators::resume))
        .routes(routes!(operators::queue_stream))
        .routes(routes!(operators::pipeline_stream))
}

/// The OpenAPI 3.1 document of the `/v1` API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    if state.api {
        let (v1, doc) = v1().split_for_parts();
        let doc = Arc::new(doc);
        router = router.merge(v1).merge(crate::dashboard::routes()).route(
            "/v1/openapi.json",
            get(move || std::future::ready(Json(doc.as_ref().clone()))),
        );
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::trace::layer))
        .with_state(state)
}

/// `Json<T>` whose rejections are problem+json with the reason and a hint.
pub struct Body<T>(pub T);

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

/// The raw request body (Service Specs, webhooks), with problem+json rejections.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
                } else {
                    ApiError::bad_request("invalid_body", rejection.body_text(), "send the body again")
                }
            })
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    state.backend.ping().await?;
    Ok(Json(
        json!({"status": "ready", "database": state.store.database_name(), "queue": state.backend.name()}),
    ))
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    kind: String,
    project: String,
    #[serde(default)]
    payload: serde_json::Value,
    run_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
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
async fn enqueue(
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

pub(crate) async fn find_job(state: &AppState, id: i64) -> Result<enclii_queue::JobRecord, ApiError> {
    state
        .backend
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} does not exist (it may have been pruned)")))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<enclii_queue::JobRecord>, ApiError> {
    let job = find_job(&state, id).await?;
    principal.require_on(Permission::Read, &job.project, &format!("job {id}"))?;
    Ok(Json(job))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = find_job(&state, id).await?;
    principal.require_on(Permission::Deploy, &job.project, &format!("job {id}"))?;
    let outcome = match state.backend.cancel(id).await? {
        CancelOutcome::Cancelled => json!({"id": id, "result": "cancelled"}),
        CancelOutcome::Requested => json!({"id": id, "result": "cancel_requested"}),
        CancelOutcome::AlreadyFinished(s) => json!({"id": id, "result": "already_finished", "state": s}),
    };
    audit_queue(&state, &principal, "job.cancel", id.to_string(), &job.project).await;
    Ok(Json(outcome))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn retry(
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

pub(crate) async fn find_pipeline(state: &AppState, id: i64) -> Result<enclii_queue::PipelineRecord, ApiError> {
    state
        .backend
        .pipeline(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("pipeline {id} does not exist")))
}

/// A pipeline run with the state of each step.
#[utoipa::path(get, path = "/v1/pipelines/{id}", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn pipeline(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<enclii_queue::PipelineRecord>, ApiError> {
    let pipeline = find_pipeline(&state, id).await?;
    principal.require_on(Permission::Read, &pipeline.project, &format!("pipeline {id}"))?;
    Ok(Json(pipeline))
}

/// Cancels every unfinished step of a pipeline (running steps are asked to stop).
#[utoipa::path(post, path = "/v1/pipelines/{id}/cancel", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn cancel_pipeline(
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
    // The release the run was building ends here too (a finished release is left alone).
    if let Ok(release) = state.store.release_for_pipeline(id).await
        && release.status == enclii_store::release_status::BUILDING
    {
        let outcome = enclii_store::ReleaseOutcome {
            failure: Some(format!("cancelled by {}", principal.subject)),
            ..Default::default()
        };
        let _ = state.store.finish_release(release.id, &outcome).await;
    }
    Ok(Json(json!({"id": id, "cancelled_steps": cancelled})))
}

/// Depth per kind, project and state: platform-wide, for operators.
#[utoipa::path(get, path = "/v1/queue/stats", tag = "queue", responses((status = 200, body = serde_json::Value)))]
async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<enclii_queue::QueueStats>, ApiError> {
    principal.require(Permission::Read, None)?;
    Ok(Json(state.backend.stats().await?))
}
