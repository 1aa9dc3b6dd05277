//! Secrets, sealed with the master key, versioned, scoped to a project, an environment or a
//! service.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query_as};
use crate::deployments::roll_serving;
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::sealing::MasterKey;
use crate::services::require_service;
use crate::{Store, now_ms};

pub(crate) async fn check_scope(conn: &mut Conn<'_>, scope: &SecretScope) -> Result<()> {
    require_project(conn, &scope.project).await?;
    if let Some(environment) = &scope.environment {
        get_environment(conn, &scope.project, environment).await?;
    }
    if let Some(service) = &scope.service {
        require_service(conn, &scope.project, service).await?;
    }
    Ok(())
}

pub(crate) fn secret_entity(scope: &SecretScope, name: &str) -> String {
    format!(
        "{}/{}/{}/{name}",
        scope.project,
        scope.environment_column(),
        scope.service_column()
    )
}

pub(crate) async fn latest_secret_version(
    conn: &mut Conn<'_>,
    scope: &SecretScope,
    name: &str,
) -> Result<Option<(i64, bool)>> {
    query_as::<(i64, bool)>(
        "SELECT version, deleted FROM secrets WHERE project = $1 AND environment = $2 AND service = $3 AND name = $4
         ORDER BY version DESC LIMIT 1",
    )
    .binds((&scope.project, scope.environment_column(), scope.service_column(), name))
    .fetch_optional(&mut *conn)
    .await
}

/// Stores a new version of a secret, sealed. The audit diff names the version, never the value.
pub(crate) async fn set_secret(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    actor: &str,
    scope: &SecretScope,
    name: &str,
    value: &[u8],
) -> Result<SecretMeta> {
    check_scope(conn, scope).await?;
    let version = latest_secret_version(conn, scope, name)
        .await?
        .map_or(1, |(v, _)| v + 1);
    let sealed = key.seal(value, &scope.binding(name, version))?;
    let meta = insert_secret_version(conn, actor, scope, name, version, Some(&sealed)).await?;
    let diff = json!({"version": version, "value": "<sealed>"});
    let entity = secret_entity(scope, name);
    audit(
        conn,
        actor,
        change("secret.set", "secret", &entity, Some(&scope.project), diff),
    )
    .await?;
    roll_scope(conn, actor, scope).await?;
    Ok(meta)
}

/// Rolls what runs in the secret's scope, so that the new value (or its absence) reaches it.
async fn roll_scope(conn: &mut Conn<'_>, actor: &str, scope: &SecretScope) -> Result<()> {
    roll_serving(
        conn,
        actor,
        &scope.project,
        scope.service.as_deref(),
        scope.environment.as_deref(),
        "secret",
    )
    .await
    .map(drop)
}

pub(crate) async fn insert_secret_version(
    conn: &mut Conn<'_>,
    actor: &str,
    scope: &SecretScope,
    name: &str,
    version: i64,
    sealed: Option<&str>,
) -> Result<SecretMeta> {
    query_as::<SecretMeta>(
        "INSERT INTO secrets (project, environment, service, name, version, sealed, deleted, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING project, environment, service, name, version, created_at, created_by",
    )
    .binds((
        &scope.project,
        scope.environment_column(),
        scope.service_column(),
        name,
        version,
        sealed,
        sealed.is_none(),
        now_ms(),
        actor,
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "secret `{name}` was changed concurrently; send the request again"
        )),
        other => other,
    })
}

pub(crate) async fn delete_secret(conn: &mut Conn<'_>, actor: &str, scope: &SecretScope, name: &str) -> Result<()> {
    let missing = || {
        StoreError::NotFound(format!(
            "secret `{name}` does not exist in {}; list the secrets there with GET /v1/projects/{}/secrets",
            scope.describe(),
            scope.project
        ))
    };
    let (version, deleted) = latest_secret_version(conn, scope, name).await?.ok_or_else(missing)?;
    if deleted {
        return Err(missing());
    }
    insert_secret_version(conn, actor, scope, name, version + 1, None).await?;
    let entity = secret_entity(scope, name);
    let diff = json!({"version": version + 1, "deleted": true});
    audit(
        conn,
        actor,
        change("secret.delete", "secret", &entity, Some(&scope.project), diff),
    )
    .await?;
    roll_scope(conn, actor, scope).await
}

/// The latest version of each live secret, narrowed by environment and service when given.
pub(crate) async fn list_secrets(
    conn: &mut Conn<'_>,
    project: &str,
    environment: Option<&str>,
    service: Option<&str>,
) -> Result<Vec<SecretMeta>> {
    require_project(conn, project).await?;
    query_as::<SecretMeta>(
        "SELECT s.project, s.environment, s.service, s.name, s.version, s.created_at, s.created_by FROM secrets s
         WHERE s.project = $1 AND ($2 IS NULL OR s.environment = $2) AND ($3 IS NULL OR s.service = $3)
           AND NOT s.deleted
           AND s.version = (SELECT MAX(t.version) FROM secrets t WHERE t.project = s.project
                            AND t.environment = s.environment AND t.service = s.service AND t.name = s.name)
         ORDER BY s.environment, s.service, s.name",
    )
    .binds((project, environment, service))
    .fetch_all(&mut *conn)
    .await
}

/// A secret's current value, for the workers that inject it (never returned by the API).
pub(crate) async fn reveal_secret(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    scope: &SecretScope,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let row = query_as::<(i64, Option<String>)>(
        "SELECT version, sealed FROM secrets WHERE project = $1 AND environment = $2 AND service = $3 AND name = $4
         ORDER BY version DESC LIMIT 1",
    )
    .binds((&scope.project, scope.environment_column(), scope.service_column(), name))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((version, Some(sealed))) => Ok(Some(key.open(&sealed, &scope.binding(name, version))?)),
        _ => Ok(None),
    }
}

impl Store {
    pub async fn set_secret(&self, actor: &str, scope: &SecretScope, name: &str, value: &[u8]) -> Result<SecretMeta> {
        let key = &self.key;
        self.write(async |conn| set_secret(conn, key, actor, scope, name, value).await)
            .await
    }
    pub async fn delete_secret(&self, actor: &str, scope: &SecretScope, name: &str) -> Result<()> {
        self.write(async |conn| delete_secret(conn, actor, scope, name).await)
            .await
    }
    pub async fn list_secrets(
        &self,
        project: &str,
        environment: Option<&str>,
        service: Option<&str>,
    ) -> Result<Vec<SecretMeta>> {
        self.read(async |conn| list_secrets(conn, project, environment, service).await)
            .await
    }
    /// The current value of a secret, for the workers that inject it. The API never calls this.
    pub async fn reveal_secret(&self, scope: &SecretScope, name: &str) -> Result<Option<Vec<u8>>> {
        let key = &self.key;
        self.read(async |conn| reveal_secret(conn, key, scope, name).await)
            .await
    }
}
