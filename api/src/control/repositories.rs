//! Repository claims and grants: who may build from a repository. The first project whose
//! service names a repository holds it; an Admin of that project grants (and revokes) other
//! projects' access. See `enclii_store`'s `repositories` module for where it is enforced.

use crate::extract::{Body, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::pipeline::repository_key;
use enclii_domain::spec::{validate_git_url, validate_slug};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::views::{self, RepositoryAccess};

use super::{Answer, check};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryGrant {
    /// The repository, as a spec names it (`https://github.com/org/shop`) or normalised
    /// (`github.com/org/shop`).
    repository: String,
    /// The project given (or losing) access.
    project: String,
}

impl RepositoryGrant {
    fn checked(&self) -> Result<String, ApiError> {
        check("project", validate_slug(&self.project))?;
        // A normalised key is not a URL; give it a scheme so the URL rules can check it.
        let url = if self.repository.contains("://") || self.repository.contains('@') {
            self.repository.clone()
        } else {
            format!("https://{}", self.repository)
        };
        check("repository", validate_git_url(&url))?;
        Ok(repository_key(&url))
    }
}

#[utoipa::path(get, path = "/v1/projects/{project}/repositories", tag = "repositories",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = [RepositoryAccess])))]
pub async fn list_repositories(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<RepositoryAccess>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(views::all(state.store.list_repositories(&project).await?)))
}

/// Lets another project build from a repository this project holds. Admin (`secrets.project`):
/// the grantee's builds may use the platform's git token for it.
#[utoipa::path(post, path = "/v1/projects/{project}/repositories/grant", tag = "repositories",
    params(("project" = String, Path, description = "Project slug (the repository's holder)")),
    request_body = RepositoryGrant,
    responses((status = 204), (status = 404, body = crate::Problem, description = "the project does not hold the repository")))]
pub async fn grant_repository(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<RepositoryGrant>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ProjectSecrets, Some(&project))?;
    let repository = req.checked()?;
    state
        .store
        .grant_repository(&principal.subject, &project, &repository, &req.project)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Withdraws a grant: the other project's services stop building from the repository's pushes.
#[utoipa::path(post, path = "/v1/projects/{project}/repositories/revoke", tag = "repositories",
    params(("project" = String, Path, description = "Project slug (the repository's holder)")),
    request_body = RepositoryGrant,
    responses((status = 204), (status = 404, body = crate::Problem)))]
pub async fn revoke_repository(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<RepositoryGrant>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ProjectSecrets, Some(&project))?;
    let repository = req.checked()?;
    state
        .store
        .revoke_repository(&principal.subject, &project, &repository, &req.project)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
