//! The router: the `/v1` routes and their OpenAPI document from one list (each handler lives in
//! its resource's module), health, readiness, metrics, the dashboard and the fallbacks.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::state::AppState;
use crate::{control, jobs, logs, operators, runtime, timetable, webhooks};

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
        .routes(routes!(
            control::projects::list_projects,
            control::projects::create_project
        ))
        .routes(routes!(
            control::projects::get_project,
            control::projects::update_project,
            control::projects::delete_project
        ))
        .routes(routes!(
            control::environments::list_environments,
            control::environments::create_environment
        ))
        .routes(routes!(
            control::environments::update_environment,
            control::environments::delete_environment
        ))
        .routes(routes!(
            control::services::list_services,
            control::services::create_service
        ))
        .routes(routes!(
            control::services::get_service,
            control::services::put_service,
            control::services::delete_service
        ))
        .routes(routes!(control::services::spec_versions))
        .routes(routes!(control::services::service_events))
        .routes(routes!(control::releases::list_project_releases))
        .routes(routes!(
            control::releases::list_releases,
            control::releases::build_release
        ))
        .routes(routes!(control::releases::get_release))
        .routes(routes!(control::releases::list_pipelines))
        .routes(routes!(control::releases::list_deliveries))
        .routes(routes!(control::deployments::create_deployment))
        .routes(routes!(control::deployments::list_deployments))
        .routes(routes!(control::deployments::get_deployment))
        .routes(routes!(control::deployments::rollback))
        .routes(routes!(control::secrets::list_secrets))
        .routes(routes!(control::secrets::set_secret, control::secrets::delete_secret))
        .routes(routes!(control::routes::list_routes, control::routes::add_route))
        .routes(routes!(control::routes::delete_route))
        .routes(routes!(control::domains::list_domains, control::domains::add_domain))
        .routes(routes!(control::domains::get_domain, control::domains::delete_domain))
        .routes(routes!(control::domains::verify_domain))
        .routes(routes!(control::addons::list_addons))
        .routes(routes!(control::addons::create_addon))
        .routes(routes!(
            control::addons::get_addon,
            control::addons::delete_addon,
            control::addon_backups::change_addon
        ))
        .routes(routes!(
            control::addon_backups::create_backup,
            control::addon_backups::list_backups
        ))
        .routes(routes!(control::addon_backups::restore_backup))
        .routes(routes!(control::addons::addon_credentials))
        .routes(routes!(control::addons::rotate_addon))
        .routes(routes!(control::repositories::list_repositories))
        .routes(routes!(control::repositories::grant_repository))
        .routes(routes!(control::repositories::revoke_repository))
        .routes(routes!(control::members::list_members))
        .routes(routes!(control::members::put_member, control::members::delete_member))
        .routes(routes!(control::tokens::whoami))
        .routes(routes!(control::tokens::list_tokens, control::tokens::create_token))
        .routes(routes!(control::tokens::revoke_token))
        .routes(routes!(control::audit::list_audit))
        .routes(routes!(runtime::service_logs))
        .routes(routes!(runtime::project_status))
        .routes(routes!(runtime::create_preview))
        .routes(routes!(timetable::run_job))
        .routes(routes!(timetable::list_job_runs))
        .routes(routes!(timetable::cost_report))
        .routes(routes!(timetable::resume_environment))
        .routes(routes!(webhooks::github))
        .routes(routes!(jobs::enqueue))
        .routes(routes!(jobs::job))
        .routes(routes!(logs::job_log))
        .routes(routes!(logs::job_log_stream))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(jobs::pipeline))
        .routes(routes!(jobs::cancel_pipeline))
        .routes(routes!(jobs::stats))
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
    let mut doc = v1().split_for_parts().1;
    crate::doc::complete(&mut doc);
    doc
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    if state.api {
        let (v1, mut doc) = v1().split_for_parts();
        crate::doc::complete(&mut doc);
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
        .layer(axum::middleware::from_fn(crate::error::problems_only))
        .layer(axum::middleware::from_fn(crate::trace::layer))
        .with_state(state)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} {}", uri.path()))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
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
