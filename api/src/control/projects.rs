//! Projects: create, list, read, rename, delete.

use crate::extract::{Body, Path, Query};
use crate::views::Project;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::spec::{validate_display_name, validate_slug};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::{Answer, Created, check};

/// Longest display name of a project, in characters.
const MAX_PROJECT_NAME: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Lowercase DNS label: `a-z`, `0-9`, `-`; starts with a letter.
    slug: String,
    /// Display name (defaults to the slug): 1–100 printable characters.
    name: Option<String>,
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 409, description = "slug taken")))]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    Body(req): Body<NewProject>,
) -> Created<Project> {
    principal.require(Permission::ProjectWrite, None)?;
    check("slug", validate_slug(&req.slug))?;
    let name = req.name.unwrap_or_else(|| req.slug.clone());
    check("name", validate_display_name(&name, MAX_PROJECT_NAME))?;
    let project = state.store.create_project(&principal.subject, &req.slug, &name).await?;
    Ok((StatusCode::CREATED, Json(project.into())))
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", responses((status = 200, body = [Project])))]
pub async fn list_projects(State(state): State<AppState>, principal: Principal) -> Answer<Vec<Project>> {
    let projects = state.store.list_projects().await?;
    Ok(Json(
        projects
            .into_iter()
            .filter(|p| principal.sees(&p.slug))
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project slug")), responses((status = 200, body = Project)))]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Project> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.project(&project).await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    name: String,
}

#[utoipa::path(patch, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project slug")), request_body = ProjectChange,
    responses((status = 200, body = Project)))]
pub async fn update_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<ProjectChange>,
) -> Answer<Project> {
    principal.require(Permission::ProjectWrite, Some(&project))?;
    check("name", validate_display_name(&req.name, MAX_PROJECT_NAME))?;
    Ok(Json(
        state
            .store
            .rename_project(&principal.subject, &project, &req.name)
            .await?
            .into(),
    ))
}

/// Deletes a project: all its queued and running work is cancelled, its rows go at once (members
/// and tokens with them), and `teardown` jobs remove every environment its services ran in.
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project slug"), super::Keep),
    responses((status = 202, body = crate::views::Deletion)))]
pub async fn delete_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(keep): Query<super::Keep>,
) -> Result<(StatusCode, Json<crate::views::Deletion>), ApiError> {
    principal.require(Permission::ProjectDelete, Some(&project))?;
    let deletion = state
        .store
        .delete_project(&principal.subject, &project, keep.keep_volumes)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(deletion.into())))
}
