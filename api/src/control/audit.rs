//! The audit trail, newest first.

use crate::extract::Query;
use crate::views::AuditEvent;
use axum::Json;
use axum::extract::State;
use enclii_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::Answer;

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    #[serde(flatten)]
    event: AuditEvent,
    diff: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    project: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    entity_type: Option<String>,
    /// Epoch milliseconds.
    since: Option<i64>,
    /// Page backwards: events with a smaller id.
    before: Option<i64>,
    limit: Option<i64>,
}

/// The audit trail, newest first. Without `project` it spans the platform (platform-wide readers only).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = [AuditView])))]
pub async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<AuditQuery>,
) -> Answer<Vec<AuditView>> {
    principal.require(Permission::Read, q.project.as_deref())?;
    if q.project.is_none() && principal.project.is_some() {
        return Err(ApiError::forbidden(
            "this token is restricted to one project",
            "add ?project=<slug> to the query",
        ));
    }
    let filter = AuditFilter {
        project: q.project,
        actor: q.actor,
        action: q.action,
        entity_type: q.entity_type,
        since: q.since,
        before: q.before,
        limit: q.limit,
    };
    let events = state.store.list_audit(&filter).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|event| AuditView {
                diff: event.diff_json(),
                event: event.into(),
            })
            .collect(),
    ))
}
