//! Identity: role bindings, API tokens and the first administrator.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, Dialect, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::require_project;
use crate::{Store, now_ms};

/// The role that governs the platform when bound on `*`. Role names are the API's (`Role::as_str`);
/// the store compares them without regard to case, as `Role::parse` does.
pub const OWNER_ROLE: &str = "Owner";

fn is_owner(role: &str) -> bool {
    role.eq_ignore_ascii_case(OWNER_ROLE)
}

/// The subjects bound Owner on `*`. On PostgreSQL their rows stay locked until the transaction
/// ends, so two Owners removing each other at once cannot both see the other one remain: the
/// second waits, then reads the first's removal. (On SQLite, `BEGIN IMMEDIATE` already
/// serialises writers.)
async fn platform_owners(conn: &mut Conn<'_>) -> Result<Vec<String>> {
    let lock = match conn.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let sql = format!("SELECT subject FROM role_bindings WHERE project = '*' AND LOWER(role) = LOWER($1){lock}");
    let rows = query_as::<(String,)>(sql)
        .bind(OWNER_ROLE)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Refuses to remove or demote (`new_role` not Owner) the last Owner on `*`: without one nobody
/// can govern the platform, and the bootstrap never runs again once any role exists. Checked in
/// the transaction of the change itself.
async fn keep_a_platform_owner(
    conn: &mut Conn<'_>,
    subject: &str,
    project: &str,
    new_role: Option<&str>,
) -> Result<()> {
    if project != "*" || new_role.is_some_and(is_owner) {
        return Ok(());
    }
    let owners = platform_owners(conn).await?;
    if owners.len() == 1 && owners[0] == subject {
        let change = if new_role.is_some() { "demoted" } else { "removed" };
        return Err(StoreError::Conflict(format!(
            "`{subject}` is the last platform Owner (Owner on `*`) and cannot be {change}: nobody could govern \
             the platform any more, and no new bootstrap token is ever issued once roles exist. Make another \
             subject Owner on `*` first (PUT /v1/projects/*/members/<subject> with {{\"role\":\"Owner\"}}), then \
             change this one; an operator with access to the database can also run `enclii server recover-owner`"
        )));
    }
    Ok(())
}

pub(crate) async fn bind_role(
    conn: &mut Conn<'_>,
    actor: &str,
    subject: &str,
    project: &str,
    role: &str,
) -> Result<RoleBinding> {
    if project != "*" {
        require_project(conn, project).await?;
    }
    keep_a_platform_owner(conn, subject, project, Some(role)).await?;
    let before = query_as::<(String,)>("SELECT role FROM role_bindings WHERE subject = $1 AND project = $2")
        .binds((subject, project))
        .fetch_optional(&mut *conn)
        .await?;
    let binding = query_as::<RoleBinding>(
        "INSERT INTO role_bindings (subject, project, role, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (subject, project) DO UPDATE SET role = $3 RETURNING *",
    )
    .binds((subject, project, role, now_ms()))
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"subject": subject, "role": {"from": before.map(|r| r.0), "to": role}});
    let scope = (project != "*").then_some(project);
    let entity = format!("{subject}@{project}");
    audit(conn, actor, change("role.bind", "role_binding", &entity, scope, diff)).await?;
    Ok(binding)
}

pub(crate) async fn unbind_role(conn: &mut Conn<'_>, actor: &str, subject: &str, project: &str) -> Result<()> {
    keep_a_platform_owner(conn, subject, project, None).await?;
    let removed = query("DELETE FROM role_bindings WHERE subject = $1 AND project = $2")
        .binds((subject, project))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(StoreError::NotFound(format!("`{subject}` has no role on `{project}`")));
    }
    let scope = (project != "*").then_some(project);
    let entity = format!("{subject}@{project}");
    audit(
        conn,
        actor,
        change("role.unbind", "role_binding", &entity, scope, json!({})),
    )
    .await
}

pub(crate) async fn roles_of(conn: &mut Conn<'_>, subject: &str) -> Result<Vec<RoleBinding>> {
    query_as::<RoleBinding>("SELECT * FROM role_bindings WHERE subject = $1 ORDER BY project")
        .bind(subject)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn role_bindings(conn: &mut Conn<'_>, project: &str) -> Result<Vec<RoleBinding>> {
    query_as::<RoleBinding>("SELECT * FROM role_bindings WHERE project = $1 OR project = '*' ORDER BY project, subject")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn count_role_bindings(conn: &mut Conn<'_>) -> Result<i64> {
    query_scalar::<i64>("SELECT COUNT(*) FROM role_bindings")
        .fetch_one(&mut *conn)
        .await
}

pub(crate) async fn insert_token(conn: &mut Conn<'_>, actor: &str, token: &TokenRecord) -> Result<()> {
    query(
        "INSERT INTO api_tokens (id, secret_hash, subject, name, scopes, project, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .binds((
        &token.id,
        &token.secret_hash,
        &token.subject,
        &token.name,
        &token.scopes,
        &token.project,
        token.created_at,
        token.expires_at,
    ))
    .execute(&mut *conn)
    .await?;
    let diff = json!({"subject": token.subject, "name": token.name, "scopes": token.scope_list(),
                      "project": token.project, "expires_at": token.expires_at});
    audit(
        conn,
        actor,
        change("token.create", "token", &token.id, token.project.as_deref(), diff),
    )
    .await
}

pub(crate) async fn find_token(conn: &mut Conn<'_>, id: &str) -> Result<Option<TokenRecord>> {
    query_as::<TokenRecord>("SELECT * FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn list_tokens(conn: &mut Conn<'_>, subject: &str) -> Result<Vec<TokenRecord>> {
    query_as::<TokenRecord>("SELECT * FROM api_tokens WHERE subject = $1 ORDER BY created_at DESC")
        .bind(subject)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn revoke_token(conn: &mut Conn<'_>, actor: &str, id: &str) -> Result<TokenRecord> {
    let token = query_as::<TokenRecord>(
        "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING *",
    )
    .binds((id, now_ms()))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("token `{id}` does not exist or is already revoked")))?;
    audit(
        conn,
        actor,
        change(
            "token.revoke",
            "token",
            id,
            token.project.as_deref(),
            json!({"subject": token.subject}),
        ),
    )
    .await?;
    Ok(token)
}

/// Two api processes starting together must not both bootstrap an administrator. (On SQLite,
/// `BEGIN IMMEDIATE` already serialises writers.)
async fn serialise_bootstrap(conn: &mut Conn<'_>) -> Result<()> {
    if conn.dialect() == Dialect::Postgres {
        query("LOCK TABLE role_bindings IN EXCLUSIVE MODE")
            .execute(conn)
            .await?;
    }
    Ok(())
}

impl Store {
    pub async fn bind_role(&self, actor: &str, subject: &str, project: &str, role: &str) -> Result<RoleBinding> {
        self.write(async |conn| bind_role(conn, actor, subject, project, role).await)
            .await
    }
    pub async fn unbind_role(&self, actor: &str, subject: &str, project: &str) -> Result<()> {
        self.write(async |conn| unbind_role(conn, actor, subject, project).await)
            .await
    }
    pub async fn roles_of(&self, subject: &str) -> Result<Vec<RoleBinding>> {
        self.read(async |conn| roles_of(conn, subject).await).await
    }
    pub async fn role_bindings(&self, project: &str) -> Result<Vec<RoleBinding>> {
        self.read(async |conn| role_bindings(conn, project).await).await
    }
    /// Creates the first administrator if nobody holds any role yet; `false` when someone does.
    pub async fn bootstrap(&self, subject: &str, owner_role: &str, token: &TokenRecord) -> Result<bool> {
        self.write(async |conn| {
            serialise_bootstrap(conn).await?;
            if count_role_bindings(conn).await? > 0 {
                Ok(false)
            } else {
                bind_role(conn, "bootstrap", subject, "*", owner_role).await?;
                insert_token(conn, "bootstrap", token).await?;
                Ok(true)
            }
        })
        .await
    }
    /// Makes `token.subject` Owner on `*` (again) and gives it `token`: the operator's way back
    /// when no Owner can sign in any more (`enclii server recover-owner`). Both changes are
    /// audited as `actor`, in one transaction.
    pub async fn recover_owner(&self, actor: &str, token: &TokenRecord) -> Result<RoleBinding> {
        self.write(async |conn| {
            let binding = bind_role(conn, actor, &token.subject, "*", OWNER_ROLE).await?;
            insert_token(conn, actor, token).await?;
            Ok(binding)
        })
        .await
    }
    pub async fn insert_token(&self, actor: &str, token: &TokenRecord) -> Result<()> {
        self.write(async |conn| insert_token(conn, actor, token).await).await
    }
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.read(async |conn| find_token(conn, id).await).await
    }
    pub async fn list_tokens(&self, subject: &str) -> Result<Vec<TokenRecord>> {
        self.read(async |conn| list_tokens(conn, subject).await).await
    }
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<TokenRecord> {
        self.write(async |conn| revoke_token(conn, actor, id).await).await
    }
}
