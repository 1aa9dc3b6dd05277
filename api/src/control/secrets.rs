//! Secrets scoped to a project, an environment or a service: set, list (names and versions, never
//! values), delete.

use crate::extract::{Body, Path, Query};
use crate::views;
use crate::views::SecretMeta;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::secrets::is_platform_secret;
use enclii_store::SecretScope;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::{Answer, check, field};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SecretPlace {
    environment: Option<String>,
    service: Option<String>,
}

impl SecretPlace {
    fn scope(self, project: &str) -> SecretScope {
        SecretScope {
            project: project.to_string(),
            environment: self.environment,
            service: self.service,
        }
    }
}

/// Service-scoped secrets need `secrets.service`; project- and environment-wide ones `secrets.project`.
fn secret_permission(scope: &SecretScope) -> Permission {
    if scope.service.is_some() {
        Permission::ServiceSecrets
    } else {
        Permission::ProjectSecrets
    }
}

fn check_secret_name(name: &str, scope: &SecretScope) -> Result<(), ApiError> {
    check("name", enclii_domain::spec::validate_env_name(name))?;
    if scope.service.is_some() && is_platform_secret(name) {
        let message = format!(
            "`{name}` is a platform secret (the clone's token or the project's signing key) and cannot be set \
             for one service"
        );
        return Err(ApiError::invalid(
            format!("service: {message}"),
            "set it for the project or an environment (omit `service`); that takes the project secrets permission (Admin)",
            vec![field("service", message)],
        ));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value; sealed at rest, never returned.
    value: String,
    environment: Option<String>,
    service: Option<String>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

#[utoipa::path(put, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets",
    params(("project" = String, Path, description = "Project slug"),
           ("name" = String, Path, description = "Secret name")), request_body = SecretValue,
    responses((status = 200, body = SecretMeta)))]
pub async fn set_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Body(req): Body<SecretValue>,
) -> Answer<SecretMeta> {
    let scope = SecretPlace {
        environment: req.environment,
        service: req.service,
    }
    .scope(&project);
    principal.require(secret_permission(&scope), Some(&project))?;
    check_secret_name(&name, &scope)?;
    if req.value.len() > 64 * 1024 {
        return Err(ApiError::invalid(
            "value: longer than 64 KiB",
            "store large data elsewhere and keep a reference in the secret",
            vec![field("value", "must be at most 65536 bytes")],
        ));
    }
    Ok(Json(
        state
            .store
            .set_secret(&principal.subject, &scope, &name, req.value.as_bytes())
            .await?
            .into(),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/secrets", tag = "secrets",
    params(("project" = String, Path, description = "Project slug"), SecretPlace),
    responses((status = 200, body = [SecretMeta], description = "names and versions; never values")))]
pub async fn list_secrets(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(place): Query<SecretPlace>,
) -> Answer<Vec<SecretMeta>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(views::all(
        state
            .store
            .list_secrets(&project, place.environment.as_deref(), place.service.as_deref())
            .await?,
    )))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets",
    params(("project" = String, Path, description = "Project slug"),
           ("name" = String, Path, description = "Secret name"),
           SecretPlace),
    responses((status = 204)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(place): Query<SecretPlace>,
) -> Result<StatusCode, ApiError> {
    let scope = place.scope(&project);
    principal.require(secret_permission(&scope), Some(&project))?;
    state.store.delete_secret(&principal.subject, &scope, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
