//! Deployments: deploy a release, roll back to an earlier one (a deploy with the rolling strategy),
//! list and read.

use crate::extract::{Body, Path, Query};
use crate::views;
use crate::views::Deployment;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_store::{DeploymentRequest, Strategy};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::{Answer, Created, check};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequestBody {
    release: i64,
    /// Defaults to the service's environment.
    environment: Option<String>,
    /// `rolling` or `canary`; defaults to the spec's strategy.
    strategy: Option<String>,
}

async fn deploy(
    state: &AppState,
    principal: &Principal,
    project: String,
    service: String,
    req: DeployRequestBody,
    reason: &str,
) -> Created<Deployment> {
    principal.require(Permission::Deploy, Some(&project))?;
    let current = state.store.service(&project, &service).await?;
    let strategy = match req.strategy {
        Some(strategy) => {
            let parsed = strategy.parse::<Strategy>();
            check(
                "strategy",
                parsed
                    .as_ref()
                    .map(|_| ())
                    .map_err(|_| format!("must be `rolling` or `canary` (got `{strategy}`)")),
            )?;
            parsed.unwrap_or_default()
        }
        None => current.typed_spec()?.spec.deploy.strategy.into(),
    };
    if let Some(policy) = &state.signatures {
        let release = state.store.release(req.release).await?;
        // Ready and signed are the store's checks; this one asks the registry.
        if release.project == project && release.signature.is_some() {
            policy
                .check(&release)
                .await
                .map_err(|why| ApiError::Conflict(format!("release {} cannot deploy: {why}", release.id)))?;
        }
    }
    let request = DeploymentRequest {
        environment: req.environment.unwrap_or(current.environment),
        project,
        service,
        release_id: req.release,
        strategy,
        reason: reason.into(),
    };
    let deployment = state.store.create_deployment(&principal.subject, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment.into())))
}

#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/deployments", tag = "deployments",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name")),
    request_body = DeployRequestBody, responses((status = 202, body = Deployment), (status = 409, body = crate::Problem)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<DeployRequestBody>,
) -> Created<Deployment> {
    deploy(&state, &principal, project, service, req, "deploy").await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The earlier ready release to return to.
    to: i64,
    environment: Option<String>,
}

#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/rollback", tag = "deployments",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name")),
    request_body = RollbackBody, responses((status = 202, body = Deployment)))]
pub async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<RollbackBody>,
) -> Created<Deployment> {
    let body = DeployRequestBody {
        release: req.to,
        environment: req.environment,
        strategy: Some("rolling".into()),
    };
    deploy(&state, &principal, project, service, body, "rollback").await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeploymentQuery {
    service: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/projects/{project}/deployments", tag = "deployments",
    params(("project" = String, Path, description = "Project slug"), DeploymentQuery),
    responses((status = 200, body = [Deployment])))]
pub async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(query): Query<DeploymentQuery>,
) -> Answer<Vec<Deployment>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(views::all(
        state
            .store
            .list_deployments(&project, query.service.as_deref(), query.limit.unwrap_or(50))
            .await?,
    )))
}

#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments",
    params(("id" = i64, Path, description = "Deployment id")), responses((status = 200, body = Deployment)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Answer<Deployment> {
    let deployment = state.store.deployment(id).await?;
    principal.require_on(Permission::Read, &deployment.project, &format!("deployment {id}"))?;
    Ok(Json(deployment.into()))
}
