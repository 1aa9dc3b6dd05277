//! Custom domains (host → service, routed once its owner proves it in DNS): add, list, show,
//! re-check, remove. See `enclii_store::Domain` for the states and `enclii_domain::ownership` for
//! the record.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::ownership::{challenge_name, new_token, validate_custom_domain};
use enclii_domain::spec::validate_url_path;
use enclii_store::NewDomain;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path};
use crate::state::{AppState, DomainSettings};
use crate::views::{Domain, DomainRecord};

use super::{Answer, Created, check};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainBody {
    /// `app.example.com`, or one wildcard level `*.example.com` (proven on `example.com`).
    host: String,
    service: String,
    /// Defaults to the service's environment.
    environment: Option<String>,
    /// Path prefix routed to the service (default `/`).
    path: Option<String>,
}

/// The row with the DNS records its owner creates.
fn view(settings: &DomainSettings, row: enclii_store::Domain) -> Domain {
    let ownership = DomainRecord {
        kind: "TXT".into(),
        name: challenge_name(&row.host),
        value: row.token.clone(),
    };
    let (kind, value) = match &settings.router_address {
        Some(address) if address.parse::<std::net::IpAddr>().is_ok() => ("A", address.clone()),
        Some(address) => ("CNAME", address.clone()),
        None => ("A", "the public IP address of this Enclii's router".into()),
    };
    let target = DomainRecord {
        kind: kind.into(),
        name: row.host.clone(),
        value,
    };
    Domain::new(row, ownership, target)
}

#[utoipa::path(post, path = "/v1/projects/{project}/domains", tag = "domains",
    params(("project" = String, Path, description = "Project slug")), request_body = DomainBody,
    responses((status = 201, body = Domain, description = "pending: create its `ownership` record"),
              (status = 409, body = crate::Problem, description = "host taken")))]
pub async fn add_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<DomainBody>,
) -> Created<Domain> {
    principal.require(Permission::Routes, Some(&project))?;
    let host = req.host.trim().trim_end_matches('.').to_ascii_lowercase();
    check("host", validate_custom_domain(&host))?;
    super::check_not_platform_host(&state, "host", &host)?;
    let path = req.path.unwrap_or_else(|| "/".into());
    check("path", validate_url_path(&path))?;
    let environment = match req.environment {
        Some(env) => env,
        None => state.store.service(&project, &req.service).await?.environment,
    };
    let new = NewDomain {
        project,
        environment,
        service: req.service,
        host,
        path,
        token: new_token(),
        window: state.domains.verify_window,
    };
    let row = state.store.add_domain(&principal.subject, &new).await?;
    Ok((StatusCode::CREATED, Json(view(&state.domains, row))))
}

#[utoipa::path(get, path = "/v1/projects/{project}/domains", tag = "domains",
    params(("project" = String, Path, description = "Project slug")), responses((status = 200, body = [Domain])))]
pub async fn list_domains(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<Domain>> {
    principal.require(Permission::Read, Some(&project))?;
    let rows = state.store.list_domains(&project).await?;
    Ok(Json(rows.into_iter().map(|row| view(&state.domains, row)).collect()))
}

#[utoipa::path(get, path = "/v1/projects/{project}/domains/{id}", tag = "domains",
    params(("project" = String, Path, description = "Project slug"), ("id" = i64, Path, description = "Domain id")),
    responses((status = 200, body = Domain)))]
pub async fn get_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
) -> Answer<Domain> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(view(&state.domains, state.store.domain(&project, id).await?)))
}

/// Checks the record again now, with a fresh deadline (a failed domain becomes pending again).
#[utoipa::path(post, path = "/v1/projects/{project}/domains/{id}/verify", tag = "domains",
    params(("project" = String, Path, description = "Project slug"), ("id" = i64, Path, description = "Domain id")),
    responses((status = 202, body = Domain, description = "a check is queued (a routed, verified domain is returned as it is)")))]
pub async fn verify_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    principal.require(Permission::Routes, Some(&project))?;
    let row = state
        .store
        .recheck_domain(&principal.subject, &project, id, state.domains.verify_window)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view(&state.domains, row))))
}

/// Removes the domain and its route (a serving domain stops being routed at the service's next
/// deploy).
#[utoipa::path(delete, path = "/v1/projects/{project}/domains/{id}", tag = "domains",
    params(("project" = String, Path, description = "Project slug"), ("id" = i64, Path, description = "Domain id")),
    responses((status = 204)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Routes, Some(&project))?;
    state.store.delete_domain(&principal.subject, &project, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
