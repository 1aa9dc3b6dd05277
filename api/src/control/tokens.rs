//! Identity (`whoami`) and personal access tokens: create (never more than the holder), list,
//! revoke. Managing tokens needs the `tokens` scope and a token without a project restriction
//! ([`Principal::require_token_management`]), so a narrow token cannot touch its holder's others.

use crate::views;
use crate::views::{RoleBinding, TokenRecord};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path};
use crate::state::AppState;

use super::{Answer, Created, field};

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    subject: String,
    roles: Vec<RoleBinding>,
    /// The token's scopes (`null` for OIDC sessions: everything the roles allow).
    scopes: Option<Vec<String>>,
    project: Option<String>,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "tokens", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(principal: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        scopes: principal
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|p| p.scope().to_string()).collect()),
        subject: principal.subject,
        roles: views::all(principal.bindings),
        project: principal.project,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    name: String,
    /// Permission scopes: `read`, `deploy`, `secrets.service`, `secrets.project`, `routes`,
    /// `project.write`, `govern`, `project.delete`, `tokens` (manage your tokens; not with
    /// `project`). Default: `read`.
    #[serde(default)]
    scopes: Vec<String>,
    /// Restrict the token to one project.
    project: Option<String>,
    /// Days until it expires (default 90, at most 365).
    #[schema(minimum = 1, maximum = 365)]
    expires_in_days: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token. It is shown only this once; store it safely.
    token: String,
    #[serde(flatten)]
    record: TokenView,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    #[serde(flatten)]
    record: TokenRecord,
    scopes: Vec<String>,
}

impl From<enclii_store::TokenRecord> for TokenView {
    fn from(record: enclii_store::TokenRecord) -> Self {
        TokenView {
            scopes: record.scope_list(),
            record: record.into(),
        }
    }
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewTokenBody,
    responses((status = 201, body = CreatedToken),
              (status = 403, body = crate::Problem, content_type = "application/problem+json", description = "the token lacks the `tokens` scope or is restricted to a project"),
              (status = 422, body = crate::Problem, content_type = "application/problem+json")))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    Body(req): Body<NewTokenBody>,
) -> Created<CreatedToken> {
    principal.require_token_management()?;
    let scopes = if req.scopes.is_empty() {
        vec!["read".to_string()]
    } else {
        req.scopes
    };
    let mut errors = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        match Permission::from_scope(scope) {
            None => errors.push(field(
                &format!("scopes[{i}]"),
                format!(
                    "unknown scope `{scope}`; known: {}",
                    crate::auth::Permission::ALL.map(|p| p.scope()).join(", ")
                ),
            )),
            Some(Permission::Tokens) if req.project.is_some() => errors.push(field(
                &format!("scopes[{i}]"),
                "a token restricted to a project cannot manage tokens; drop `tokens` or `project`",
            )),
            // A token never carries more than its holder: each scope must be held somewhere.
            Some(p) => {
                let held = match req.project.as_deref() {
                    Some(project) => principal.require(p, Some(project)).is_ok(),
                    None => principal.holds_anywhere(p),
                };
                if !held {
                    errors.push(field(
                        &format!("scopes[{i}]"),
                        format!("you do not hold `{scope}` yourself"),
                    ));
                }
            }
        }
    }
    let days = req.expires_in_days.unwrap_or(90);
    if days == 0 || days > 365 {
        errors.push(field("expires_in_days", format!("must be 1–365 (got {days})")));
    }
    if !errors.is_empty() {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::invalid(detail, "fix the named fields and send again", errors));
    }
    let token = enclii_auth::token::generate();
    let now = chrono::Utc::now().timestamp_millis();
    // A token never outlives the token that created it.
    let expires_at = match principal.expires_at {
        Some(parent) => parent.min(now + i64::from(days) * 86_400_000),
        None => now + i64::from(days) * 86_400_000,
    };
    let record = enclii_store::TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash.clone(),
        subject: principal.subject.clone(),
        name: req.name,
        scopes: json!(scopes).to_string(),
        project: req.project,
        created_at: now,
        expires_at: Some(expires_at),
        revoked_at: None,
    };
    state.store.insert_token(&principal.subject, &record).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: token.plaintext,
            record: record.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = [TokenView]),
              (status = 403, body = crate::Problem, content_type = "application/problem+json", description = "the token lacks the `tokens` scope or is restricted to a project")))]
pub async fn list_tokens(State(state): State<AppState>, principal: Principal) -> Answer<Vec<TokenView>> {
    principal.require_token_management()?;
    let tokens = state.store.list_tokens(&principal.subject).await?;
    Ok(Json(tokens.into_iter().map(TokenView::from).collect()))
}

/// Revokes one of your tokens (Admins and Owners of the platform may revoke anyone's).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (the public part of `enclii_pat_<id>_<secret>`)")),
    responses((status = 204),
              (status = 403, body = crate::Problem, content_type = "application/problem+json", description = "the token lacks the `tokens` scope or is restricted to a project"),
              (status = 404, body = crate::Problem, content_type = "application/problem+json")))]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_token_management()?;
    let token = state
        .store
        .token(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("token `{id}` does not exist")))?;
    if token.subject != principal.subject {
        principal.require(Permission::Govern, None)?;
    }
    state.store.revoke_token(&principal.subject, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
