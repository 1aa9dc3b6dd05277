//! Who may build from a repository: it belongs to the first project whose service names it
//! (its claim); another project builds from it only with the owner's grant.
//!
//! GitHub signs deliveries per webhook, not per project: without claims, anyone allowed to create
//! a service could name another project's repository, and that project's pushes would build in
//! theirs — cloned with the platform's git token if one is configured. Claims are checked where a
//! service starts naming a repository ([`hold_repository`]), where a delivery picks the services
//! to build ([`crate::services::services_for_repository`]) and before the platform's token is
//! sent ([`Store::holds_repository`]).

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::RepositoryAccess;
use crate::projects::require_project;
use crate::{Store, now_ms};

/// Whether `project` may build from `repository`: it holds the claim or a grant.
pub(crate) async fn holds(conn: &mut Conn<'_>, project: &str, repository: &str) -> Result<bool> {
    let held = query_scalar::<i64>(
        "SELECT COUNT(*) FROM repository_claims c
         WHERE c.repository = $1
           AND (c.project = $2 OR EXISTS (SELECT 1 FROM repository_grants g
                                          WHERE g.repository = $1 AND g.project = $2))",
    )
    .binds((repository, project))
    .fetch_one(&mut *conn)
    .await?;
    Ok(held > 0)
}

/// Makes sure `project` may build from `repository`: claims it when nobody has, refuses when
/// another project holds it and has not granted `project` access.
pub(crate) async fn hold_repository(conn: &mut Conn<'_>, actor: &str, project: &str, repository: &str) -> Result<()> {
    let claimed = query_scalar::<String>(
        "INSERT INTO repository_claims (repository, project, claimed_at, claimed_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repository) DO NOTHING RETURNING project",
    )
    .binds((repository, project, now_ms(), actor))
    .fetch_optional(&mut *conn)
    .await?;
    // A claim is part of the service change that makes it (its audit event names the repository).
    if claimed.is_some() || holds(conn, project, repository).await? {
        return Ok(());
    }
    let owner = query_scalar::<String>("SELECT project FROM repository_claims WHERE repository = $1")
        .bind(repository)
        .fetch_one(&mut *conn)
        .await?;
    Err(StoreError::Conflict(format!(
        "spec.source.git.repository: {repository} belongs to project `{owner}`, which has not granted \
         `{project}` access; ask an Admin of `{owner}` to run `POST /v1/projects/{owner}/repositories/grant` \
         with {{\"repository\": \"{repository}\", \"project\": \"{project}\"}}"
    )))
}

async fn require_claim(conn: &mut Conn<'_>, owner: &str, repository: &str) -> Result<()> {
    let holder = query_scalar::<String>("SELECT project FROM repository_claims WHERE repository = $1")
        .bind(repository)
        .fetch_optional(&mut *conn)
        .await?;
    match holder {
        Some(holder) if holder == owner => Ok(()),
        _ => Err(StoreError::NotFound(format!(
            "project `{owner}` does not hold repository {repository}; see GET /v1/projects/{owner}/repositories"
        ))),
    }
}

/// Lets `grantee` build from `owner`'s repository.
pub(crate) async fn grant(
    conn: &mut Conn<'_>,
    actor: &str,
    owner: &str,
    repository: &str,
    grantee: &str,
) -> Result<()> {
    require_claim(conn, owner, repository).await?;
    require_project(conn, grantee).await?;
    if grantee == owner {
        return Err(StoreError::Invalid(format!(
            "project `{owner}` already holds {repository}"
        )));
    }
    query(
        "INSERT INTO repository_grants (repository, project, granted_at, granted_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repository, project) DO NOTHING",
    )
    .binds((repository, grantee, now_ms(), actor))
    .execute(&mut *conn)
    .await?;
    let diff = json!({"repository": repository, "project": grantee});
    audit(
        conn,
        actor,
        change("repository.grant", "repository", repository, Some(owner), diff),
    )
    .await
}

/// Withdraws a grant; `grantee`'s services on the repository stop building from its deliveries.
pub(crate) async fn revoke(
    conn: &mut Conn<'_>,
    actor: &str,
    owner: &str,
    repository: &str,
    grantee: &str,
) -> Result<()> {
    require_claim(conn, owner, repository).await?;
    let removed = query("DELETE FROM repository_grants WHERE repository = $1 AND project = $2")
        .binds((repository, grantee))
        .execute(&mut *conn)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "project `{grantee}` has no grant on {repository}"
        )));
    }
    let diff = json!({"repository": repository, "project": grantee});
    audit(
        conn,
        actor,
        change("repository.revoke", "repository", repository, Some(owner), diff),
    )
    .await
}

/// The repositories `project` holds, each with the projects it granted, and those it was granted.
pub(crate) async fn list(conn: &mut Conn<'_>, project: &str) -> Result<Vec<RepositoryAccess>> {
    require_project(conn, project).await?;
    let rows = query_as::<(String, String, Option<String>)>(
        "SELECT c.repository, c.project, g.project FROM repository_claims c
         LEFT JOIN repository_grants g ON g.repository = c.repository
         WHERE c.project = $1 OR c.repository IN (SELECT repository FROM repository_grants WHERE project = $1)
         ORDER BY c.repository, g.project",
    )
    .bind(project)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<RepositoryAccess> = Vec::new();
    for (repository, owner, grantee) in rows {
        if out.last().is_none_or(|last| last.repository != repository) {
            out.push(RepositoryAccess {
                repository,
                owner,
                granted_to: vec![],
            });
        }
        // A grantee sees the owner, not who else was granted.
        let entry = out.last_mut().expect("pushed above");
        if let Some(grantee) = grantee
            && (entry.owner == project || grantee == project)
        {
            entry.granted_to.push(grantee);
        }
    }
    Ok(out)
}

impl Store {
    /// Whether `project` may build from `repository` (as `repository_key` gives it).
    pub async fn holds_repository(&self, project: &str, repository: &str) -> Result<bool> {
        self.read(async |conn| holds(conn, project, repository).await).await
    }
    pub async fn grant_repository(&self, actor: &str, owner: &str, repository: &str, grantee: &str) -> Result<()> {
        self.write(async |conn| grant(conn, actor, owner, repository, grantee).await)
            .await
    }
    pub async fn revoke_repository(&self, actor: &str, owner: &str, repository: &str, grantee: &str) -> Result<()> {
        self.write(async |conn| revoke(conn, actor, owner, repository, grantee).await)
            .await
    }
    pub async fn list_repositories(&self, project: &str) -> Result<Vec<RepositoryAccess>> {
        self.read(async |conn| list(conn, project).await).await
    }
}
