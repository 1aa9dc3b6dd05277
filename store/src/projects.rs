//! Projects and their environments (settings, quotas, budgets).

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query_as};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::{Store, now_ms};

pub(crate) const DEFAULT_ENVIRONMENTS: [&str; 3] = ["dev", "stage", "prod"];

pub(crate) async fn create_project(conn: &mut Conn<'_>, actor: &str, slug: &str, name: &str) -> Result<Project> {
    let now = now_ms();
    let project = query_as::<Project>(
        "INSERT INTO projects (slug, name, created_at, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (slug) DO NOTHING RETURNING *",
    )
    .binds((slug, name, now, actor))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Conflict(format!("project `{slug}` already exists; choose another slug")))?;
    for environment in DEFAULT_ENVIRONMENTS {
        insert_environment(conn, slug, environment, &EnvironmentChange::default()).await?;
    }
    let diff = json!({"name": name, "environments": DEFAULT_ENVIRONMENTS});
    audit(conn, actor, change("project.create", "project", slug, Some(slug), diff)).await?;
    Ok(project)
}

pub(crate) async fn list_projects(conn: &mut Conn<'_>) -> Result<Vec<Project>> {
    query_as::<Project>("SELECT * FROM projects ORDER BY slug")
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn get_project(conn: &mut Conn<'_>, slug: &str) -> Result<Option<Project>> {
    query_as::<Project>("SELECT * FROM projects WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn require_project(conn: &mut Conn<'_>, slug: &str) -> Result<Project> {
    get_project(conn, slug).await?.ok_or_else(|| {
        StoreError::NotFound(format!(
            "project `{slug}` does not exist; create it with POST /v1/projects"
        ))
    })
}

pub(crate) async fn rename_project(conn: &mut Conn<'_>, actor: &str, slug: &str, name: &str) -> Result<Project> {
    let before = require_project(conn, slug).await?;
    let project = query_as::<Project>("UPDATE projects SET name = $2 WHERE slug = $1 RETURNING *")
        .binds((slug, name))
        .fetch_one(&mut *conn)
        .await?;
    let diff = json!({"name": {"from": before.name, "to": name}});
    audit(conn, actor, change("project.update", "project", slug, Some(slug), diff)).await?;
    Ok(project)
}

pub(crate) async fn insert_environment(
    conn: &mut Conn<'_>,
    project: &str,
    name: &str,
    settings: &EnvironmentChange,
) -> Result<Option<Environment>> {
    query_as::<Environment>(
        "INSERT INTO environments (project, name, region, budget_cents, created_at, quota_cpu_millis,
                                   quota_memory_mib, quota_storage_mib, quota_pods)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (project, name) DO NOTHING RETURNING *",
    )
    .binds((
        project,
        name,
        &settings.region,
        settings.budget_cents,
        now_ms(),
        settings.quota_cpu_millis,
        settings.quota_memory_mib,
        settings.quota_storage_mib,
        settings.quota_pods,
    ))
    .fetch_optional(&mut *conn)
    .await
}

pub(crate) async fn create_environment(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
    settings: &EnvironmentChange,
) -> Result<Environment> {
    require_project(conn, project).await?;
    let environment = insert_environment(conn, project, name, settings)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("environment `{name}` already exists in project `{project}`")))?;
    let diff = json!({"region": settings.region, "budget_cents": settings.budget_cents, "quota": quota_json(settings)});
    let entity = format!("{project}/{name}");
    audit(
        conn,
        actor,
        change("environment.create", "environment", &entity, Some(project), diff),
    )
    .await?;
    Ok(environment)
}

pub(crate) async fn list_environments(conn: &mut Conn<'_>, project: &str) -> Result<Vec<Environment>> {
    require_project(conn, project).await?;
    query_as::<Environment>("SELECT * FROM environments WHERE project = $1 ORDER BY name")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn get_environment(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Environment> {
    query_as::<Environment>("SELECT * FROM environments WHERE project = $1 AND name = $2")
        .binds((project, name))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "environment `{name}` does not exist in project `{project}`; create it with POST /v1/projects/{project}/environments"
            ))
        })
}

pub(crate) async fn update_environment(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
    settings: &EnvironmentChange,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    let environment = query_as::<Environment>(
        "UPDATE environments SET region = $3, budget_cents = $4, quota_cpu_millis = $5, quota_memory_mib = $6,
                                 quota_storage_mib = $7, quota_pods = $8
         WHERE project = $1 AND name = $2 RETURNING *",
    )
    .binds((
        project,
        name,
        &settings.region,
        settings.budget_cents,
        settings.quota_cpu_millis,
        settings.quota_memory_mib,
        settings.quota_storage_mib,
        settings.quota_pods,
    ))
    .fetch_one(&mut *conn)
    .await?;
    let before_quota = json!({"cpu_millis": before.quota_cpu_millis, "memory_mib": before.quota_memory_mib,
                              "storage_mib": before.quota_storage_mib, "pods": before.quota_pods});
    let diff = json!({
        "region": {"from": before.region, "to": settings.region},
        "budget_cents": {"from": before.budget_cents, "to": settings.budget_cents},
        "quota": {"from": before_quota, "to": quota_json(settings)},
    });
    let entity = format!("{project}/{name}");
    audit(
        conn,
        actor,
        change("environment.update", "environment", &entity, Some(project), diff),
    )
    .await?;
    Ok(environment)
}

pub(crate) fn quota_json(settings: &EnvironmentChange) -> serde_json::Value {
    json!({"cpu_millis": settings.quota_cpu_millis, "memory_mib": settings.quota_memory_mib,
           "storage_mib": settings.quota_storage_mib, "pods": settings.quota_pods})
}

impl Store {
    pub async fn create_project(&self, actor: &str, slug: &str, name: &str) -> Result<Project> {
        self.write(async |conn| create_project(conn, actor, slug, name).await)
            .await
    }
    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        self.read(async |conn| list_projects(conn).await).await
    }
    pub async fn project(&self, slug: &str) -> Result<Project> {
        self.read(async |conn| require_project(conn, slug).await).await
    }
    pub async fn rename_project(&self, actor: &str, slug: &str, name: &str) -> Result<Project> {
        self.write(async |conn| rename_project(conn, actor, slug, name).await)
            .await
    }
    pub async fn create_environment(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        settings: &EnvironmentChange,
    ) -> Result<Environment> {
        self.write(async |conn| create_environment(conn, actor, project, name, settings).await)
            .await
    }
    pub async fn update_environment(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        settings: &EnvironmentChange,
    ) -> Result<Environment> {
        self.write(async |conn| update_environment(conn, actor, project, name, settings).await)
            .await
    }
    pub async fn environment(&self, project: &str, name: &str) -> Result<Environment> {
        self.read(async |conn| get_environment(conn, project, name).await).await
    }
    pub async fn list_environments(&self, project: &str) -> Result<Vec<Environment>> {
        self.read(async |conn| list_environments(conn, project).await).await
    }
}
