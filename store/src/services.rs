//! Services, as applied from Service Specs, and their spec history.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as};
use crate::deployments::roll_serving;
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::repositories::hold_repository;
use crate::routes::{find_route, insert_route, require_proven_host, route_label, route_owner, sync_routes};
use crate::{Store, now_ms};

/// Creates or updates a service from its spec; every apply is a new spec version. Routes in the
/// spec are bound to the service, refusing any host and path another service holds.
pub(crate) async fn apply_service(
    conn: &mut Conn<'_>,
    actor: &str,
    draft: &ServiceDraft,
    routes: &[(String, String, bool)],
) -> Result<(Service, bool)> {
    let (project, name) = (draft.project.as_str(), draft.name.as_str());
    require_project(conn, project).await?;
    get_environment(conn, project, &draft.environment).await?;
    let before = get_service(conn, project, name).await?;
    if let Some(repository) = &draft.repository {
        hold_repository(conn, actor, project, repository).await?;
    }
    let now = now_ms();
    // The version comes from the row itself, so concurrent applies get consecutive versions.
    let service = query_as::<Service>(
        "INSERT INTO services (project, name, environment, repository, branch, spec, spec_version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)
         ON CONFLICT (project, name) DO UPDATE SET environment = $3, repository = $4, branch = $5, spec = $6,
             spec_version = services.spec_version + 1, updated_at = $7
         RETURNING *",
    )
    .binds((project, name, &draft.environment, &draft.repository, &draft.branch, &draft.spec, now))
    .fetch_one(&mut *conn)
    .await?;
    let version = service.spec_version;
    query(
        "INSERT INTO service_spec_versions (project, service, version, spec, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .binds((project, name, version, &draft.spec, now, actor))
    .execute(&mut *conn)
    .await?;
    for (index, (host, path, redirect)) in routes.iter().enumerate() {
        match find_route(conn, host, path).await? {
            Some(route) if route.project == project && route.service == name => {
                if route.tls != *redirect {
                    query("UPDATE routes SET tls = $1 WHERE id = $2")
                        .binds((*redirect, route.id))
                        .execute(&mut *conn)
                        .await?;
                    sync_routes(conn, project, &route.environment, name).await?;
                }
            }
            Some(route) => {
                return Err(StoreError::Conflict(format!(
                    "spec.routes[{index}]: {} is already routed to {}; remove that route or choose another host or path",
                    route_label(host, path),
                    route_owner(&route, project)
                )));
            }
            None => {
                require_proven_host(conn, project, host, &format!("spec.routes[{index}].host")).await?;
                insert_route(conn, project, &draft.environment, name, host, path, *redirect).await?;
            }
        }
    }
    let action = if before.is_some() {
        "service.update"
    } else {
        "service.create"
    };
    let diff = json!({
        "spec_version": {"from": before.as_ref().map(|s| s.spec_version), "to": version},
        "spec": {"from": before.as_ref().map(Service::spec_json), "to": service.spec_json()},
    });
    let entity = format!("{project}/{name}");
    audit(conn, actor, change(action, "service", &entity, Some(project), diff)).await?;
    if let Some(reason) = before.as_ref().and_then(|before| live_change(before, &service)) {
        roll_serving(conn, actor, project, Some(name), None, reason).await?;
    }
    Ok((service, before.is_none()))
}

/// What of a service's spec changed that applies to what runs, as a deployment's reason: its
/// environment, command or limits (`config`), else its replica range (`scale`). A spec that does
/// not parse counts as unchanged: nothing is rolled for it.
fn live_change(before: &Service, after: &Service) -> Option<&'static str> {
    let (Ok(b), Ok(a)) = (before.typed_spec(), after.typed_spec()) else {
        return None;
    };
    let (b, a) = (&b.spec, &a.spec);
    let runtime = |s: &enclii_domain::spec::Spec| {
        let r = &s.runtime;
        (r.cmd.clone(), r.cpu.clone(), r.memory.clone())
    };
    if b.env != a.env || b.env_from != a.env_from || runtime(b) != runtime(a) {
        Some("config")
    } else if b.runtime.replicas != a.runtime.replicas {
        Some("scale")
    } else {
        None
    }
}

pub(crate) async fn get_service(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Option<Service>> {
    query_as::<Service>("SELECT * FROM services WHERE project = $1 AND name = $2")
        .binds((project, name))
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn require_service(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Service> {
    get_service(conn, project, name).await?.ok_or_else(|| {
        StoreError::NotFound(format!(
            "service `{name}` does not exist in project `{project}`; create it by sending its Service Spec to PUT /v1/projects/{project}/services/{name}"
        ))
    })
}

pub(crate) async fn list_services(conn: &mut Conn<'_>, project: &str) -> Result<Vec<Service>> {
    require_project(conn, project).await?;
    query_as::<Service>("SELECT * FROM services WHERE project = $1 ORDER BY name")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn spec_versions(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Vec<SpecVersion>> {
    require_service(conn, project, name).await?;
    query_as::<SpecVersion>(
        "SELECT version, spec, created_at, created_by FROM service_spec_versions
         WHERE project = $1 AND service = $2 ORDER BY version DESC",
    )
    .binds((project, name))
    .fetch_all(&mut *conn)
    .await
}

pub(crate) async fn services_for_repository(conn: &mut Conn<'_>, repository: &str) -> Result<Vec<Service>> {
    // Only projects that hold the repository (its claim or a grant) build from it.
    query_as::<Service>(
        "SELECT s.* FROM services s
         WHERE s.repository = $1
           AND EXISTS (SELECT 1 FROM repository_claims c WHERE c.repository = $1 AND c.project = s.project
                       UNION ALL
                       SELECT 1 FROM repository_grants g WHERE g.repository = $1 AND g.project = s.project)
         ORDER BY s.project, s.name",
    )
    .bind(repository)
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    /// Creates or updates a service; `routes` are the spec's (host, path) pairs. Returns the
    /// service and whether it was created.
    pub async fn apply_service(
        &self,
        actor: &str,
        draft: &ServiceDraft,
        routes: &[(String, String, bool)],
    ) -> Result<(Service, bool)> {
        self.write(async |conn| apply_service(conn, actor, draft, routes).await)
            .await
    }
    pub async fn service(&self, project: &str, name: &str) -> Result<Service> {
        self.read(async |conn| require_service(conn, project, name).await).await
    }
    pub async fn list_services(&self, project: &str) -> Result<Vec<Service>> {
        self.read(async |conn| list_services(conn, project).await).await
    }
    pub async fn spec_versions(&self, project: &str, name: &str) -> Result<Vec<SpecVersion>> {
        self.read(async |conn| spec_versions(conn, project, name).await).await
    }
    /// The projects whose services build from a repository (by [`repository_key`](enclii_domain::pipeline::repository_key)).
    pub async fn projects_for_repository(&self, repository: &str) -> Result<Vec<String>> {
        let services = self
            .read(async |conn| services_for_repository(conn, repository).await)
            .await?;
        let mut projects: Vec<String> = services.into_iter().map(|s| s.project).collect();
        projects.dedup();
        Ok(projects)
    }
}
