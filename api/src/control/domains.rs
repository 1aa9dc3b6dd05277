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
use crate::extract::{Body, Path, Query};
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

/// `?delete_certificate=true` on a removal: delete the host's certificate now (else it is kept
/// until it expires, and serves again if the domain comes back).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Removal {
    #[serde(default)]
    delete_certificate: bool,
}

/// The row with its certificate, if it has one.
async fn view_of(state: &AppState, row: enclii_store::Domain) -> Result<Domain, ApiError> {
    let certificate = state.store.certificate(&row.host).await?;
    Ok(view(&state.domains, row, certificate))
}

/// The row with the DNS records its owner creates.
fn view(
    settings: &DomainSettings,
    row: enclii_store::Domain,
    certificate: Option<enclii_store::Certificate>,
) -> Domain {
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
    Domain::new(row, ownership, target, certificate)
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
    Ok((StatusCode::CREATED, Json(view_of(&state, row).await?)))
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
    let mut certificates: std::collections::HashMap<String, enclii_store::Certificate> = state
        .store
        .project_certificates(&project)
        .await?
        .into_iter()
        .map(|c| (c.host.clone(), c))
        .collect();
    Ok(Json(
        rows.into_iter()
            .map(|row| {
                let certificate = certificates.remove(&row.host);
                view(&state.domains, row, certificate)
            })
            .collect(),
    ))
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
    Ok(Json(view_of(&state, state.store.domain(&project, id).await?).await?))
}

/// Checks the record again now, with a fresh deadline (a failed domain becomes pending again); a
/// verified, routed one whose certificate failed (or never was ordered) gets a new order now.
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
    if state.domains.orders_certificates
        && row.status == enclii_store::DomainStatus::Verified
        && row.route_id.is_some()
        && !row.host.starts_with("*.")
    {
        let certificate = state.store.certificate(&row.host).await?;
        if certificate.is_none_or(|c| c.status == enclii_store::CertificateStatus::Failed) {
            state
                .store
                .request_certificate(&principal.subject, &project, &row.host)
                .await?;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(view_of(&state, row).await?)))
}

/// Removes the domain and its route (a serving domain stops being routed at once); its
/// certificate is kept until it expires unless `delete_certificate=true`.
#[utoipa::path(delete, path = "/v1/projects/{project}/domains/{id}", tag = "domains",
    params(("project" = String, Path, description = "Project slug"), ("id" = i64, Path, description = "Domain id"),
           Removal),
    responses((status = 204)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
    Query(removal): Query<Removal>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Routes, Some(&project))?;
    state
        .store
        .delete_domain(&principal.subject, &project, id, removal.delete_certificate)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
