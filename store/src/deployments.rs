//! Deployments of ready releases to environments, and what a deployer reads for one
//! (routes, secrets) or forgets with a torn-down preview.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::releases::get_release;
use crate::routes::{find_route, insert_route, route_label, route_owner};
use crate::sealing::MasterKey;
use crate::secrets::list_secrets;
use crate::services::require_service;
use crate::{Store, now_ms};
use enclii_queue::NewJob;

/// What starting a deployment did to the service's other deployments in its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Supersession {
    /// It superseded these older unfinished ones and goes ahead.
    Supersedes(Vec<i64>),
    /// A newer deployment (this id, the oldest of them) exists: this one ended as superseded.
    SupersededBy(i64),
}

pub(crate) async fn create_deployment(
    conn: &mut Conn<'_>,
    actor: &str,
    request: &DeploymentRequest,
) -> Result<Deployment> {
    let (project, service) = (request.project.as_str(), request.service.as_str());
    require_service(conn, project, service).await?;
    get_environment(conn, project, &request.environment).await?;
    let release = get_release(conn, request.release_id).await?;
    if release.project != project || release.service != service {
        return Err(StoreError::NotFound(format!(
            "release {} belongs to {}/{}, not to {project}/{service}",
            release.id, release.project, release.service
        )));
    }
    check_deployable(&release)?;
    let now = now_ms();
    let deployment = query_as::<Deployment>(
        "INSERT INTO deployments (project, service, environment, release_id, strategy, status, reason, created_at,
                                  updated_at, created_by)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7, $8) RETURNING *",
    )
    .binds((
        project,
        service,
        &request.environment,
        release.id,
        request.strategy,
        &request.reason,
        now,
        actor,
    ))
    .fetch_one(&mut *conn)
    .await?;
    let job = NewJob::typed(
        project,
        &enclii_domain::jobs::Deploy {
            service: service.to_string(),
            environment: request.environment.clone(),
            commit: release.git_sha.clone(),
            deployment: Some(deployment.id),
        },
    )?;
    let job_id = conn.enqueue(job).await?;
    let deployment = query_as::<Deployment>("UPDATE deployments SET job_id = $2 WHERE id = $1 RETURNING *")
        .binds((deployment.id, job_id))
        .fetch_one(&mut *conn)
        .await?;
    let diff = json!({"service": service, "environment": request.environment, "release": release.id,
                      "strategy": request.strategy, "job": job_id});
    let action = if request.reason == "rollback" {
        "deployment.rollback"
    } else {
        "deployment.create"
    };
    let entity = deployment.id.to_string();
    audit(conn, actor, change(action, "deployment", &entity, Some(project), diff)).await?;
    Ok(deployment)
}

/// Only a ready, signed release deploys (the deploy policy: an image runs only with the cosign
/// signature its pipeline made).
pub(crate) fn check_deployable(release: &Release) -> Result<()> {
    if release.status != ReleaseStatus::Ready {
        return Err(StoreError::Conflict(format!(
            "release {} is {}, not ready; only ready releases can be deployed{}",
            release.id,
            release.status,
            if release.status == ReleaseStatus::Building {
                " (wait for its pipeline to finish)"
            } else {
                ""
            }
        )));
    }
    if release.signature.is_none() || release.digest.is_none() {
        return Err(StoreError::Conflict(format!(
            "release {} is not signed; the deploy policy refuses unsigned images (rebuild the commit so its sign step runs)",
            release.id
        )));
    }
    Ok(())
}

/// The deployment a pipeline's deploy job works on: created by its first attempt (keyed by the
/// job, so a retry finds the same row), for the release the pipeline built.
pub(crate) async fn pipeline_deployment(
    conn: &mut Conn<'_>,
    job_id: i64,
    project: &str,
    deploy: &enclii_domain::jobs::Deploy,
    strategy: &str,
) -> Result<Deployment> {
    let existing = query_as::<Deployment>("SELECT * FROM deployments WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await?;
    let release = query_as::<Release>(
        "SELECT * FROM releases WHERE project = $1 AND service = $2 AND environment = $3 AND git_sha = $4",
    )
    .binds((project, &deploy.service, &deploy.environment, &deploy.commit))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::NotFound(format!(
            "no release of {project}/{} for commit {} in environment `{}`",
            deploy.service, deploy.commit, deploy.environment
        ))
    })?;
    if let Some(existing) = existing {
        if existing.project == project
            && existing.environment == deploy.environment
            && existing.release_id == release.id
        {
            return Ok(existing);
        }
        // Another job's deployment: a queue that lost its data handed this job id out again.
        // The id only serves a retry's lookup; the old deployment keeps everything else.
        tracing::warn!(
            job = job_id,
            deployment = existing.id,
            "a reused job id named another deployment; detached from it"
        );
        query("UPDATE deployments SET job_id = NULL WHERE id = $1")
            .bind(existing.id)
            .execute(&mut *conn)
            .await?;
    }
    check_deployable(&release)?;
    let now = now_ms();
    let deployment = query_as::<Deployment>(
        "INSERT INTO deployments (project, service, environment, release_id, strategy, status, reason, job_id,
                                  created_at, updated_at, created_by)
         VALUES ($1, $2, $3, $4, $5, 'pending', 'deploy', $6, $7, $7, 'system:pipeline') RETURNING *",
    )
    .binds((
        project,
        &deploy.service,
        &deploy.environment,
        release.id,
        strategy,
        job_id,
        now,
    ))
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"service": deploy.service, "environment": deploy.environment, "release": release.id,
                      "strategy": strategy, "job": job_id});
    let entity = deployment.id.to_string();
    audit(
        conn,
        "system:pipeline",
        change("deployment.create", "deployment", &entity, Some(project), diff),
    )
    .await?;
    Ok(deployment)
}

/// Records a deployment's progress (audited); a finished deployment never changes again, so a
/// late or retried job cannot rewrite how it ended.
pub(crate) async fn update_deployment(
    conn: &mut Conn<'_>,
    actor: &str,
    id: i64,
    update: &DeploymentUpdate,
) -> Result<Deployment> {
    let before = get_deployment(conn, id).await?;
    if before.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "deployment {id} already ended as {}; start a new deployment instead",
            before.status
        )));
    }
    let now = now_ms();
    let finished = update.status.is_terminal().then_some(now);
    let deployment = query_as::<Deployment>(
        "UPDATE deployments SET status = $2, detail = COALESCE($3, detail), canary_percent = $4,
                                url = COALESCE($5, url), updated_at = $6, finished_at = $7
         WHERE id = $1 RETURNING *",
    )
    .binds((
        id,
        update.status,
        &update.detail,
        update.canary_percent,
        &update.url,
        now,
        finished,
    ))
    .fetch_one(&mut *conn)
    .await?;
    if before.status != update.status || before.canary_percent != update.canary_percent {
        let diff = json!({"status": {"from": before.status, "to": update.status},
                          "canary_percent": update.canary_percent, "detail": update.detail});
        let entity = id.to_string();
        let action = format!("deployment.{}", update.status);
        audit(
            conn,
            actor,
            change(&action, "deployment", &entity, Some(&deployment.project), diff),
        )
        .await?;
    }
    Ok(deployment)
}

/// Marks the service's other unfinished deployments in the environment superseded by `by`.
pub(crate) async fn supersede_deployments(conn: &mut Conn<'_>, by: &Deployment) -> Result<Supersession> {
    // A deployment created after this one (a newer push, a rollback) decides what serves: this
    // one is stale, however late its job came to run.
    let newer: Option<i64> = query_scalar(
        "SELECT MIN(id) FROM deployments WHERE project = $1 AND environment = $2 AND service = $3 AND id > $4",
    )
    .binds((&by.project, &by.environment, &by.service, by.id))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(newer) = newer {
        query(
            "UPDATE deployments SET status = 'superseded', detail = $2, updated_at = $3, finished_at = $3
             WHERE id = $1 AND status IN ('pending', 'running', 'canary')",
        )
        .binds((by.id, format!("superseded by deployment {newer}"), now_ms()))
        .execute(&mut *conn)
        .await?;
        return Ok(Supersession::SupersededBy(newer));
    }
    let ids: Vec<i64> = query_scalar(
        "UPDATE deployments SET status = 'superseded', detail = $5, updated_at = $6, finished_at = $6
         WHERE project = $1 AND environment = $2 AND service = $3 AND id < $4
           AND status IN ('pending', 'running', 'canary')
         RETURNING id",
    )
    .binds((
        &by.project,
        &by.environment,
        &by.service,
        by.id,
        format!("superseded by deployment {}", by.id),
        now_ms(),
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(Supersession::Supersedes(ids))
}

/// The deployment serving the service in the environment now: the latest that succeeded.
pub(crate) async fn current_deployment(conn: &mut Conn<'_>, key: &ServiceKey) -> Result<Option<Deployment>> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    query_as::<Deployment>(
        "SELECT * FROM deployments WHERE project = $1 AND environment = $2 AND service = $3 AND status = 'succeeded'
         ORDER BY id DESC LIMIT 1",
    )
    .binds((project, environment, service))
    .fetch_optional(&mut *conn)
    .await
}

/// Deploys again, with the service's current spec and secrets, the release each matching
/// environment serves (its newest deployment, succeeded), as a deployment with `reason`: a change
/// that applies to what runs without a build — a secret (`secret`), the spec's environment or
/// limits (`config`), its replica range (`scale`). `service` and `environment` narrow the set.
pub(crate) async fn roll_serving(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    service: Option<&str>,
    environment: Option<&str>,
    reason: &str,
) -> Result<Vec<Deployment>> {
    let serving: Vec<Deployment> = query_as::<Deployment>(
        "SELECT d.* FROM deployments d
         WHERE d.project = $1 AND ($2 = '' OR d.service = $2) AND ($3 = '' OR d.environment = $3)
           AND d.status = 'succeeded'
           AND d.id = (SELECT MAX(id) FROM deployments n
                       WHERE n.project = d.project AND n.service = d.service AND n.environment = d.environment)
         ORDER BY d.id",
    )
    .binds((project, service.unwrap_or(""), environment.unwrap_or("")))
    .fetch_all(&mut *conn)
    .await?;
    let mut rolled = Vec::with_capacity(serving.len());
    for current in serving {
        let request = DeploymentRequest {
            project: current.project.clone(),
            service: current.service.clone(),
            environment: current.environment.clone(),
            release_id: current.release_id,
            strategy: Strategy::Rolling,
            reason: reason.to_string(),
        };
        rolled.push(create_deployment(conn, actor, &request).await?);
    }
    Ok(rolled)
}

/// The routes bound to the service in one environment.
pub(crate) async fn service_routes(conn: &mut Conn<'_>, key: &ServiceKey) -> Result<Vec<Route>> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    query_as::<Route>("SELECT * FROM routes WHERE project = $1 AND environment = $2 AND service = $3 ORDER BY id")
        .binds((project, environment, service))
        .fetch_all(&mut *conn)
        .await
}

/// Binds a host the platform generated (a preview's, or one under the base domain) to the
/// service (idempotent); refused if another service holds it.
pub(crate) async fn bind_generated_route(conn: &mut Conn<'_>, key: &ServiceKey, host: &str) -> Result<Route> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    match find_route(conn, host, "/").await? {
        Some(route) if route.project == *project && route.service == *service && route.environment == *environment => {
            Ok(route)
        }
        Some(route) => Err(StoreError::Conflict(format!(
            "{} is already routed to {}; the platform's generated hosts (preview and base domain) are \
             reserved for it",
            route_label(host, "/"),
            route_owner(&route, project)
        ))),
        None => insert_route(conn, project, environment, service, host, "/", false).await,
    }
}

/// The secrets a service reads in an environment, by name: the narrowest scope wins (service in
/// the environment, then the service everywhere, the environment, the project).
pub(crate) async fn service_secrets(
    conn: &mut Conn<'_>,
    master: &MasterKey,
    key: &ServiceKey,
) -> Result<Vec<(String, Vec<u8>)>> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    let rows = query_as::<(String, String, String, i64, String)>(
        "SELECT s.environment, s.service, s.name, s.version, s.sealed FROM secrets s
         WHERE s.project = $1 AND s.environment IN ('', $2) AND s.service IN ('', $3) AND NOT s.deleted
           AND s.version = (SELECT MAX(t.version) FROM secrets t WHERE t.project = s.project
                            AND t.environment = s.environment AND t.service = s.service AND t.name = s.name)",
    )
    .binds((project, environment, service))
    .fetch_all(&mut *conn)
    .await?;
    let mut chosen: std::collections::BTreeMap<String, (u8, Vec<u8>)> = Default::default();
    for (env, svc, name, version, sealed) in rows {
        let rank = u8::from(!svc.is_empty()) * 2 + u8::from(!env.is_empty());
        if chosen.get(&name).is_some_and(|(r, _)| *r >= rank) {
            continue;
        }
        let scope = SecretScope {
            project: project.to_string(),
            environment: (!env.is_empty()).then_some(env),
            service: (!svc.is_empty()).then_some(svc),
        };
        let value = master.open(&sealed, &scope.binding(&name, version))?;
        chosen.insert(name, (rank, value));
    }
    Ok(chosen.into_iter().map(|(name, (_, value))| (name, value)).collect())
}

/// Ends the deployments in `environment` (of one `service` only, if given) that run or still
/// serve as `torn_down`: what they started is being removed from the target. Returns how many.
pub(crate) async fn tear_down_deployments(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    service: Option<&str>,
) -> Result<u64> {
    Ok(query(
        "UPDATE deployments SET status = 'torn_down', updated_at = $4, finished_at = COALESCE(finished_at, $4)
         WHERE project = $1 AND environment = $2 AND ($3 IS NULL OR service = $3)
           AND status IN ('pending', 'running', 'canary', 'succeeded')",
    )
    .binds((project, environment, service, now_ms()))
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Removes an environment's rows: its routes and custom domains, its secrets (every scope within
/// it) and the environment itself. Returns whether the environment was there. Its deployments, releases and
/// job runs stay as history; no service may be at home in it (the foreign key refuses).
pub(crate) async fn forget_environment(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    keep_addon_data: bool,
) -> Result<bool> {
    // Before the environment's row: its add-on rows go with it (a foreign key), and their
    // removal jobs are made from them.
    crate::addons::remove_addons_of(conn, project, Some(environment), keep_addon_data).await?;
    for statement in [
        "DELETE FROM routes WHERE project = $1 AND environment = $2",
        "DELETE FROM domains WHERE project = $1 AND environment = $2",
        "DELETE FROM secrets WHERE project = $1 AND environment = $2",
    ] {
        query(statement)
            .binds((project, environment))
            .execute(&mut *conn)
            .await?;
    }
    let deleted = query("DELETE FROM environments WHERE project = $1 AND name = $2")
        .binds((project, environment))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(deleted > 0)
}

/// Forgets what a torn-down preview held for one service: its routes and domains, and its deployments end
/// as torn down. When no other service runs there any more, the environment itself goes with
/// its secrets. Releases stay (their provenance is history).
pub(crate) async fn forget_preview(conn: &mut Conn<'_>, actor: &str, key: &ServiceKey) -> Result<()> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    for statement in [
        "DELETE FROM routes WHERE project = $1 AND environment = $2 AND service = $3",
        "DELETE FROM domains WHERE project = $1 AND environment = $2 AND service = $3",
    ] {
        query(statement)
            .binds((project, environment, service))
            .execute(&mut *conn)
            .await?;
    }
    tear_down_deployments(conn, project, environment, Some(service.as_str())).await?;
    let still_running: i64 = query_scalar(
        "SELECT COUNT(*) FROM deployments WHERE project = $1 AND environment = $2
           AND status IN ('pending', 'running', 'canary', 'succeeded')",
    )
    .binds((project, environment))
    .fetch_one(&mut *conn)
    .await?;
    let mut diff = json!({"service": service});
    if still_running == 0 {
        diff["environment_removed"] = json!(forget_environment(conn, project, environment, false).await?);
    }
    let entity = format!("{project}/{environment}");
    audit(
        conn,
        actor,
        change("environment.teardown", "environment", &entity, Some(project), diff),
    )
    .await
}

/// Everything deploying `deployment`'s release reads, on one connection: the release, the
/// environment, the service's routes there, its secrets' values and the service-scoped secrets.
pub(crate) async fn deploy_plan(
    conn: &mut Conn<'_>,
    master: &MasterKey,
    deployment: &Deployment,
) -> Result<DeployPlan> {
    let key = deployment.key();
    Ok(DeployPlan {
        release: get_release(conn, deployment.release_id).await?,
        environment: get_environment(conn, &key.project, &key.environment).await?,
        routes: service_routes(conn, &key).await?,
        secrets: service_secrets(conn, master, &key).await?,
        service_scoped: list_secrets(conn, &key.project, None, Some(&key.service)).await?,
        addons: crate::addons::environment_addons(conn, master, &key.project, &key.environment).await?,
    })
}

pub(crate) async fn get_deployment(conn: &mut Conn<'_>, id: i64) -> Result<Deployment> {
    query_as::<Deployment>("SELECT * FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id} does not exist")))
}

pub(crate) async fn list_deployments(
    conn: &mut Conn<'_>,
    project: &str,
    service: Option<&str>,
    limit: i64,
) -> Result<Vec<Deployment>> {
    require_project(conn, project).await?;
    query_as::<Deployment>(
        "SELECT * FROM deployments WHERE project = $1 AND ($2 IS NULL OR service = $2) ORDER BY id DESC LIMIT $3",
    )
    .binds((project, service, limit.clamp(1, 500)))
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    pub async fn create_deployment(&self, actor: &str, request: &DeploymentRequest) -> Result<Deployment> {
        self.write(async |conn| create_deployment(conn, actor, request).await)
            .await
    }
    pub async fn deployment(&self, id: i64) -> Result<Deployment> {
        self.read(async |conn| get_deployment(conn, id).await).await
    }
    pub async fn list_deployments(&self, project: &str, service: Option<&str>, limit: i64) -> Result<Vec<Deployment>> {
        self.read(async |conn| list_deployments(conn, project, service, limit).await)
            .await
    }
    /// The deployment a pipeline's deploy job works on (created by its first attempt).
    pub async fn pipeline_deployment(
        &self,
        job_id: i64,
        project: &str,
        deploy: &enclii_domain::jobs::Deploy,
        strategy: &str,
    ) -> Result<Deployment> {
        self.write(async |conn| pipeline_deployment(conn, job_id, project, deploy, strategy).await)
            .await
    }
    /// Records a deployment's progress, and enqueues `then` (its next step) in the same
    /// transaction; refused once the deployment has ended.
    pub async fn update_deployment(
        &self,
        actor: &str,
        id: i64,
        update: &DeploymentUpdate,
        then: Option<enclii_queue::NewJob>,
    ) -> Result<Deployment> {
        self.write(async |conn| {
            let deployment = update_deployment(conn, actor, id, update).await?;
            if let Some(job) = then {
                conn.enqueue(job).await?;
            }
            Ok(deployment)
        })
        .await
    }
    /// Marks the service's older unfinished deployments in the environment superseded — or `by`
    /// itself, when a newer deployment of the service exists there.
    pub async fn supersede_deployments(&self, by: &Deployment) -> Result<Supersession> {
        self.write(async |conn| supersede_deployments(conn, by).await).await
    }
    /// The deployment serving the service in the environment now, if any.
    pub async fn current_deployment(&self, key: &ServiceKey) -> Result<Option<Deployment>> {
        self.read(async |conn| current_deployment(conn, key).await).await
    }
    pub async fn service_routes(&self, key: &ServiceKey) -> Result<Vec<Route>> {
        self.read(async |conn| service_routes(conn, key).await).await
    }
    pub async fn bind_generated_route(&self, key: &ServiceKey, host: &str) -> Result<Route> {
        self.write(async |conn| bind_generated_route(conn, key, host).await)
            .await
    }
    /// The secret values a service reads in an environment (narrowest scope wins), for the
    /// deployer that injects them. The API never calls this.
    pub async fn service_secrets(&self, key: &ServiceKey) -> Result<Vec<(String, Vec<u8>)>> {
        let master = &self.key;
        self.read(async |conn| service_secrets(conn, master, key).await).await
    }
    /// What deploying (or running a job of) `deployment`'s release reads, in one read: the
    /// release, its environment, the service's routes and secrets there.
    pub async fn deploy_plan(&self, deployment: &Deployment) -> Result<DeployPlan> {
        let key = &self.key;
        self.read(async |conn| deploy_plan(conn, key, deployment).await).await
    }
    /// Forgets what a torn-down preview held for one service (and the environment once empty).
    pub async fn forget_preview(&self, actor: &str, key: &ServiceKey) -> Result<()> {
        self.write(async |conn| forget_preview(conn, actor, key).await).await
    }
}
