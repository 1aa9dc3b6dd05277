//! Members: role bindings on a project (or `*`); nobody grants above their own role or changes
//! someone ranked above them, and the last Owner on `*` stays (the store refuses, with `409`, to
//! remove or demote it in the transaction of the change, so two Owners cannot remove each other
//! at once; `enclii server recover-owner` is the operators' way back).

use crate::extract::{Body, Path};
use crate::views;
use crate::views::RoleBinding;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal, Role};
use crate::error::ApiError;
use crate::state::AppState;

use super::Answer;

#[utoipa::path(get, path = "/v1/projects/{project}/members", tag = "members",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = [RoleBinding])))]
pub async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<RoleBinding>> {
    principal.require(Permission::Read, Some(&project))?;
    state.store.project(&project).await?;
    Ok(Json(views::all(state.store.role_bindings(&project).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    role: Role,
}

/// Grants `subject` a role on a project (`*` for every project). Nobody grants above their own role;
/// the last Owner on `*` cannot be demoted.
#[utoipa::path(put, path = "/v1/projects/{project}/members/{subject}", tag = "members",
    params(("project" = String, Path, description = "Project slug"),
           ("subject" = String, Path, description = "Member subject (as in the role binding)")), request_body = MemberBody,
    responses((status = 200, body = RoleBinding),
              (status = 409, body = crate::Problem, description = "it would demote the last Owner on `*`")))]
pub async fn put_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, subject)): Path<(String, String)>,
    Body(req): Body<MemberBody>,
) -> Answer<RoleBinding> {
    let scope = (project != "*").then_some(project.as_str());
    let own = principal.require(Permission::Govern, scope)?;
    if req.role > own {
        return Err(ApiError::forbidden(
            format!("you are {} and cannot grant {}", own.as_str(), req.role.as_str()),
            "ask an Owner to grant it",
        ));
    }
    check_outranks(&state, own, &subject, &project).await?;
    Ok(Json(
        state
            .store
            .bind_role(&principal.subject, &subject, &project, req.role.as_str())
            .await?
            .into(),
    ))
}

/// Removes `subject`'s role on a project (`*`: its platform-wide role); never the last Owner on `*`.
#[utoipa::path(delete, path = "/v1/projects/{project}/members/{subject}", tag = "members",
    params(("project" = String, Path, description = "Project slug"),
           ("subject" = String, Path, description = "Member subject (as in the role binding)")),
    responses((status = 204),
              (status = 409, body = crate::Problem, description = "it would remove the last Owner on `*`")))]
pub async fn delete_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, subject)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = (project != "*").then_some(project.as_str());
    let own = principal.require(Permission::Govern, scope)?;
    check_outranks(&state, own, &subject, &project).await?;
    state.store.unbind_role(&principal.subject, &subject, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Nobody changes or removes the binding of someone ranked above them (an Admin cannot demote an Owner).
async fn check_outranks(state: &AppState, own: Role, subject: &str, project: &str) -> Result<(), ApiError> {
    let current = state.store.roles_of(subject).await?;
    if let Some(theirs) = current
        .iter()
        .filter(|b| b.project == project)
        .filter_map(|b| Role::parse(&b.role))
        .max()
        && theirs > own
    {
        return Err(ApiError::forbidden(
            format!(
                "`{subject}` is {} on `{project}`; you are {}",
                theirs.as_str(),
                own.as_str()
            ),
            "ask an Owner to change it",
        ));
    }
    Ok(())
}
