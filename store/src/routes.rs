//! Routes: which host and path go to which service in which environment.

use serde_json::json;

use enclii_domain::jobs::RouteSync;
use enclii_domain::ownership::{is_reserved_host, proof_covers};
use enclii_queue::NewJob;

use crate::audit::{audit, change};
use crate::db::{Conn, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::services::require_service;
use crate::{Store, now_ms};

pub(crate) fn route_label(host: &str, path: &str) -> String {
    format!("host `{host}` path `{path}`")
}

/// Who holds a route, as far as a caller of `asking_project` may know.
pub(crate) fn route_owner(route: &Route, asking_project: &str) -> String {
    if route.project == asking_project {
        format!(
            "{}/{}/{} (route {})",
            route.project, route.environment, route.service, route.id
        )
    } else {
        "another project".into()
    }
}

/// Refuses a new route on `host` unless the project has proven it owns it: a verified domain of
/// the project on the host or above it (see [`proof_covers`]), or a name reserved from public DNS
/// (see [`is_reserved_host`]). Without this, a project could route any host it likes, including
/// one that another tenant's users trust. `place` says where the host was given.
pub(crate) async fn require_proven_host(conn: &mut Conn<'_>, project: &str, host: &str, place: &str) -> Result<()> {
    if is_reserved_host(host) {
        return Ok(());
    }
    let proven: Vec<String> = query_scalar("SELECT host FROM domains WHERE project = $1 AND status = $2")
        .binds((project, DomainStatus::Verified))
        .fetch_all(&mut *conn)
        .await?;
    if proven.iter().any(|domain| proof_covers(domain, host)) {
        return Ok(());
    }
    Err(StoreError::Unproven(format!(
        "{place}: project `{project}` has not proven it owns host `{host}`: no verified domain of the project \
         is `{host}` or a domain above it"
    )))
}

pub(crate) async fn find_route(conn: &mut Conn<'_>, host: &str, path: &str) -> Result<Option<Route>> {
    query_as::<Route>("SELECT * FROM routes WHERE host = $1 AND path = $2")
        .binds((host, path))
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn insert_route(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    service: &str,
    host: &str,
    path: &str,
    tls: bool,
) -> Result<Route> {
    query_as::<Route>(
        "INSERT INTO routes (project, environment, service, host, path, tls, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .binds((project, environment, service, host, path, tls, now_ms()))
    .fetch_one(&mut *conn)
    .await
}

/// Enqueues applying the service's routes in `environment` to the deploy target now (a
/// `route-sync` job, in the same transaction as the change), if it was ever deployed there;
/// otherwise its first deploy binds them.
pub(crate) async fn sync_routes(conn: &mut Conn<'_>, project: &str, environment: &str, service: &str) -> Result<()> {
    let deployed: Option<i64> =
        query_scalar("SELECT MAX(id) FROM deployments WHERE project = $1 AND environment = $2 AND service = $3")
            .binds((project, environment, service))
            .fetch_one(&mut *conn)
            .await?;
    if deployed.is_some() {
        let job = RouteSync {
            service: service.to_string(),
            environment: environment.to_string(),
        };
        conn.enqueue(NewJob::typed(project, &job)?).await?;
    }
    Ok(())
}

pub(crate) async fn add_route(conn: &mut Conn<'_>, actor: &str, new: &NewRoute) -> Result<Route> {
    require_service(conn, &new.project, &new.service).await?;
    get_environment(conn, &new.project, &new.environment).await?;
    if let Some(route) = find_route(conn, &new.host, &new.path).await? {
        return Err(StoreError::Conflict(format!(
            "{} is already routed to {}; remove that route first or choose another host or path",
            route_label(&new.host, &new.path),
            route_owner(&route, &new.project)
        )));
    }
    require_proven_host(conn, &new.project, &new.host, "host").await?;
    let route = insert_route(
        conn,
        &new.project,
        &new.environment,
        &new.service,
        &new.host,
        &new.path,
        new.tls,
    )
    .await?;
    let diff = json!({"host": route.host, "path": route.path, "service": route.service,
                      "environment": route.environment, "tls": route.tls});
    let entity = route.id.to_string();
    audit(
        conn,
        actor,
        change("route.create", "route", &entity, Some(&new.project), diff),
    )
    .await?;
    sync_routes(conn, &route.project, &route.environment, &route.service).await?;
    Ok(route)
}

pub(crate) async fn list_routes(conn: &mut Conn<'_>, project: &str) -> Result<Vec<Route>> {
    require_project(conn, project).await?;
    query_as::<Route>("SELECT * FROM routes WHERE project = $1 ORDER BY host, path")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn delete_route(conn: &mut Conn<'_>, actor: &str, project: &str, id: i64) -> Result<()> {
    let route = query_as::<Route>("DELETE FROM routes WHERE id = $1 AND project = $2 RETURNING *")
        .binds((id, project))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("route {id} does not exist in project `{project}`")))?;
    let diff = json!({"host": route.host, "path": route.path, "service": route.service});
    audit(
        conn,
        actor,
        change("route.delete", "route", &id.to_string(), Some(project), diff),
    )
    .await?;
    sync_routes(conn, project, &route.environment, &route.service).await
}

impl Store {
    pub async fn add_route(&self, actor: &str, route: &NewRoute) -> Result<Route> {
        self.write(async |conn| add_route(conn, actor, route).await).await
    }
    pub async fn list_routes(&self, project: &str) -> Result<Vec<Route>> {
        self.read(async |conn| list_routes(conn, project).await).await
    }
    pub async fn delete_route(&self, actor: &str, project: &str, id: i64) -> Result<()> {
        self.write(async |conn| delete_route(conn, actor, project, id).await)
            .await
    }
}
