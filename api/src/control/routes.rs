//! Routes (host and path to a service): add, list, delete.

use crate::views;
use crate::views::Route;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::spec::{validate_hostname, validate_url_path};
use enclii_store::NewRoute;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path};
use crate::state::AppState;

use super::{Answer, Created, check};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    service: String,
    /// Defaults to the service's environment.
    environment: Option<String>,
    host: String,
    #[serde(default = "root_path")]
    path: String,
    /// `{redirect: false}` keeps plain HTTP once the host has a certificate (default: redirect
    /// to HTTPS). A bare `true`/`false` is read as `redirect` (the earlier form).
    #[serde(default)]
    tls: Option<RouteTlsBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum RouteTlsBody {
    Redirect(bool),
    Options {
        #[serde(default = "yes")]
        redirect: bool,
    },
}

fn yes() -> bool {
    true
}

fn root_path() -> String {
    "/".into()
}

#[utoipa::path(post, path = "/v1/projects/{project}/routes", tag = "routes",
    params(("project" = String, Path, description = "Project slug")), request_body = RouteBody,
    responses((status = 201, body = Route), (status = 409, body = crate::Problem, description = "host and path taken"),
              (status = 403, body = crate::Problem, content_type = "application/problem+json",
               description = "the caller may not change routes, or no verified domain of the project covers the host (see docs/domains.md)")))]
pub async fn add_route(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<RouteBody>,
) -> Created<Route> {
    principal.require(Permission::Routes, Some(&project))?;
    check("host", validate_hostname(&req.host))?;
    super::check_not_platform_host(&state, "host", &req.host)?;
    check("path", validate_url_path(&req.path))?;
    let environment = match req.environment {
        Some(env) => env,
        None => state.store.service(&project, &req.service).await?.environment,
    };
    let route = NewRoute {
        project,
        environment,
        service: req.service,
        host: req.host.to_ascii_lowercase(),
        path: req.path,
        tls: match req.tls {
            None => true,
            Some(RouteTlsBody::Redirect(redirect) | RouteTlsBody::Options { redirect }) => redirect,
        },
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.add_route(&principal.subject, &route).await?.into()),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/routes", tag = "routes",
    params(("project" = String, Path, description = "Project slug")), responses((status = 200, body = [Route])))]
pub async fn list_routes(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<Route>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(views::all(state.store.list_routes(&project).await?)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/routes/{id}", tag = "routes",
    params(("project" = String, Path, description = "Project slug"), ("id" = i64, Path, description = "Route id")), responses((status = 204)))]
pub async fn delete_route(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Routes, Some(&project))?;
    state.store.delete_route(&principal.subject, &project, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
