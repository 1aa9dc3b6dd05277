//! Services from Service Specs (YAML or JSON): apply, list, read, delete, and the spec history.

use crate::views::{Service, SpecVersion};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use enclii_domain::pipeline::repository_key;
use enclii_domain::spec::{ServiceSpec, SpecFormat};
use enclii_store::ServiceDraft;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::{ApiError, FieldError};
use crate::extract::{Path, Query, RawBody};
use crate::state::AppState;

use super::{Answer, field};

#[derive(Serialize, ToSchema)]
pub struct ServiceView {
    #[serde(flatten)]
    service: Service,
    /// The current Service Spec, canonical JSON.
    spec: serde_json::Value,
}

impl From<enclii_store::Service> for ServiceView {
    fn from(service: enclii_store::Service) -> Self {
        ServiceView {
            spec: service.spec_json(),
            service: service.into(),
        }
    }
}

/// Parses a Service Spec body (YAML or JSON by Content-Type, sniffed otherwise) into a draft.
fn parse_spec(headers: &HeaderMap, body: &[u8]) -> Result<(ServiceSpec, ServiceDraft), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_encoding",
            format!("the spec is not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            "send the Service Spec as UTF-8 YAML or JSON",
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if content_type.contains("json") {
        ServiceSpec::parse(text, SpecFormat::Json)
    } else if content_type.contains("yaml") {
        ServiceSpec::parse(text, SpecFormat::Yaml)
    } else {
        ServiceSpec::parse_any(text)
    };
    let spec = parsed.map_err(|errors| {
        let fields: Vec<FieldError> = errors.iter().map(|e| field(&e.path, e.message.clone())).collect();
        ApiError::invalid(
            errors.to_string(),
            "fix the named fields of the Service Spec and send it again",
            fields,
        )
    })?;
    let git = spec.spec.source.as_ref().map(|s| &s.git);
    let draft = ServiceDraft {
        project: spec.metadata.project.clone(),
        name: spec.metadata.name.clone(),
        environment: spec.metadata.environment.clone(),
        repository: git.map(|g| repository_key(&g.repository)),
        branch: git.map(|g| g.branch.clone()),
        spec: serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    Ok((spec, draft))
}

async fn apply(
    state: &AppState,
    principal: &Principal,
    project: &str,
    name: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(bool, ServiceView), ApiError> {
    principal.require(Permission::Deploy, Some(project))?;
    let (spec, draft) = parse_spec(headers, body)?;
    if draft.project != project {
        return Err(ApiError::invalid(
            format!(
                "metadata.project: the spec is for project `{}`, but was sent to `{project}`",
                draft.project
            ),
            "send it to the project it names, or change metadata.project",
            vec![field("metadata.project", format!("must be `{project}`"))],
        ));
    }
    if let Some(name) = name
        && draft.name != name
    {
        return Err(ApiError::invalid(
            format!(
                "metadata.name: the spec is for service `{}`, but was sent to `{name}`",
                draft.name
            ),
            "send it to the service it names, or change metadata.name",
            vec![field("metadata.name", format!("must be `{name}`"))],
        ));
    }
    if !spec.spec.routes.is_empty() {
        principal.require(Permission::Routes, Some(project))?;
    }
    for (index, route) in spec.spec.routes.iter().enumerate() {
        super::check_not_platform_host(state, &format!("spec.routes[{index}].host"), &route.host)?;
    }
    let routes: Vec<(String, String, bool)> = spec
        .spec
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path.clone(), r.redirects_to_https()))
        .collect();
    let (service, created) = state.store.apply_service(&principal.subject, &draft, &routes).await?;
    Ok((created, service.into()))
}

#[utoipa::path(post, path = "/v1/projects/{project}/services", tag = "services",
    params(("project" = String, Path, description = "Project slug")),
    request_body(content = String, description = "A Service Spec", content_type = "application/yaml"),
    responses((status = 201, body = ServiceView), (status = 422, body = crate::Problem),
              (status = 403, body = crate::Problem, content_type = "application/problem+json",
               description = "the caller may not apply specs, or a new route's host is not covered by a verified domain of the project")))]
pub async fn create_service(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let (created, view) = apply(&state, &principal, &project, None, &headers, &body).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

#[utoipa::path(put, path = "/v1/projects/{project}/services/{service}", tag = "services",
    params(("project" = String, Path, description = "Project slug"), ("service" = String, Path, description = "Service name")),
    request_body(content = String, description = "A Service Spec", content_type = "application/yaml"),
    responses((status = 200, body = ServiceView), (status = 201, body = ServiceView), (status = 422, body = crate::Problem)))]
pub async fn put_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let (created, view) = apply(&state, &principal, &project, Some(&name), &headers, &body).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services", tag = "services",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = [ServiceView])))]
pub async fn list_services(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<ServiceView>> {
    principal.require(Permission::Read, Some(&project))?;
    let services = state.store.list_services(&project).await?;
    Ok(Json(services.into_iter().map(ServiceView::from).collect()))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}", tag = "services",
    params(("project" = String, Path, description = "Project slug"), ("service" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceView)))]
pub async fn get_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> Answer<ServiceView> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.service(&project, &name).await?.into()))
}

/// Deletes a service: its queued and running work is cancelled, its rows go at once, and
/// `teardown` jobs remove its containers, routes and volumes (unless `keep_volumes`) from the target.
#[utoipa::path(delete, path = "/v1/projects/{project}/services/{service}", tag = "services",
    params(("project" = String, Path, description = "Project slug"), ("service" = String, Path, description = "Service name"),
           super::Keep),
    responses((status = 202, body = crate::views::Deletion)))]
pub async fn delete_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(keep): Query<super::Keep>,
) -> Result<(StatusCode, Json<crate::views::Deletion>), ApiError> {
    principal.require(Permission::ProjectWrite, Some(&project))?;
    let deletion = state
        .store
        .delete_service(&principal.subject, &project, &name, keep.keep_volumes)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(deletion.into())))
}

#[derive(Serialize, ToSchema)]
pub struct SpecVersionView {
    #[serde(flatten)]
    version: SpecVersion,
    spec: serde_json::Value,
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/specs", tag = "services",
    params(("project" = String, Path, description = "Project slug"), ("service" = String, Path, description = "Service name")),
    responses((status = 200, body = [SpecVersionView])))]
pub async fn spec_versions(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> Answer<Vec<SpecVersionView>> {
    principal.require(Permission::Read, Some(&project))?;
    let versions = state.store.spec_versions(&project, &name).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|version| SpecVersionView {
                spec: version.spec_json(),
                version: version.into(),
            })
            .collect(),
    ))
}

/// `?limit=` on a service's events (default 100, at most 500).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    limit: Option<i64>,
}

/// What the service's replicas did on their own between deploys, newest first: exits the engine
/// restarted, restarts after failed liveness probes (Docker target).
#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/events", tag = "services",
    params(("project" = String, Path, description = "Project slug"), ("service" = String, Path, description = "Service name"),
           EventsQuery),
    responses((status = 200, body = [crate::views::ReplicaEvent])))]
pub async fn service_events(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
) -> Answer<Vec<crate::views::ReplicaEvent>> {
    principal.require(Permission::Read, Some(&project))?;
    let events = state
        .store
        .replica_events(&project, &name, query.limit.unwrap_or(100))
        .await?;
    Ok(Json(crate::views::all(events)))
}
