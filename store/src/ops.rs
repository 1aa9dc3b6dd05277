// The control plane's operations, written once and compiled twice by `lib.rs`: in module `pg` with
// `Conn = PgConnection` and `Queue = PostgresQueue`, in module `lite` for SQLite. The SQL is the
// portable subset both understand (`$n` parameters, `ON CONFLICT`, `RETURNING`, epoch-ms BIGINTs,
// JSON as text), so each query exists once. Every mutating operation runs inside the caller's
// transaction and writes its audit event there too.

use enclii_domain::pipeline::{BuildRequest, build_and_deploy, preview_teardown};
use enclii_queue::{Backend, NewJob, NewPipeline, PipelineEnqueued};
use serde_json::json;

use crate::error::{Result, StoreError};
use crate::model::*;
use crate::now_ms;
use crate::sealing::MasterKey;

/// Where jobs go: into this transaction when the queue lives in the same database, otherwise to
/// the queue backend (Redis) before the transaction commits.
pub struct Jobs<'a> {
    pub queue: &'a Queue,
    pub same_database: bool,
    pub backend: &'a dyn Backend,
}

impl Jobs<'_> {
    async fn pipeline(&self, conn: &mut Conn, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        Ok(if self.same_database {
            self.queue.enqueue_pipeline_in(conn, pipeline).await?
        } else {
            self.backend.enqueue_pipeline(pipeline).await?
        })
    }

    pub(crate) async fn job(&self, conn: &mut Conn, job: NewJob) -> Result<i64> {
        let mut enqueued = if self.same_database {
            self.queue.enqueue_in(conn, vec![job]).await?
        } else {
            self.backend.enqueue(vec![job]).await?
        };
        Ok(enqueued.remove(0).id)
    }
}

pub async fn audit(conn: &mut Conn, actor: &str, change: Change<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, entity_type, entity, project, diff)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(change.action)
    .bind(change.entity_type)
    .bind(&change.entity)
    .bind(change.project)
    .bind(change.diff.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn list_audit(conn: &mut Conn, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
    Ok(sqlx::query_as::<_, AuditEvent>(
        "SELECT * FROM audit_events
         WHERE ($1 IS NULL OR project = $1) AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $3)
           AND ($4 IS NULL OR entity_type = $4) AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(&filter.project)
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.entity_type)
    .bind(filter.since)
    .bind(filter.before)
    .bind(filter.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(&mut *conn)
    .await?)
}

// --- projects and environments ------------------------------------------------------------------

pub const DEFAULT_ENVIRONMENTS: [&str; 3] = ["dev", "stage", "prod"];

pub async fn create_project(conn: &mut Conn, actor: &str, slug: &str, name: &str) -> Result<Project> {
    let now = now_ms();
    let project = sqlx::query_as::<_, Project>(
        "INSERT INTO projects (slug, name, created_at, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (slug) DO NOTHING RETURNING *",
    )
    .bind(slug)
    .bind(name)
    .bind(now)
    .bind(actor)
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

pub async fn list_projects(conn: &mut Conn) -> Result<Vec<Project>> {
    Ok(sqlx::query_as::<_, Project>("SELECT * FROM projects ORDER BY slug")
        .fetch_all(&mut *conn)
        .await?)
}

pub async fn get_project(conn: &mut Conn, slug: &str) -> Result<Option<Project>> {
    Ok(sqlx::query_as::<_, Project>("SELECT * FROM projects WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&mut *conn)
        .await?)
}

pub async fn require_project(conn: &mut Conn, slug: &str) -> Result<Project> {
    get_project(conn, slug)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("project `{slug}` does not exist; create it with POST /v1/projects")))
}

pub async fn rename_project(conn: &mut Conn, actor: &str, slug: &str, name: &str) -> Result<Project> {
    let before = require_project(conn, slug).await?;
    let project = sqlx::query_as::<_, Project>("UPDATE projects SET name = $2 WHERE slug = $1 RETURNING *")
        .bind(slug)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    let diff = json!({"name": {"from": before.name, "to": name}});
    audit(conn, actor, change("project.update", "project", slug, Some(slug), diff)).await?;
    Ok(project)
}

pub async fn delete_project(conn: &mut Conn, actor: &str, slug: &str) -> Result<()> {
    require_project(conn, slug).await?;
    sqlx::query("DELETE FROM projects WHERE slug = $1")
        .bind(slug)
        .execute(&mut *conn)
        .await?;
    // Whoever creates the slug again must not inherit its members or its tokens.
    sqlx::query("DELETE FROM role_bindings WHERE project = $1")
        .bind(slug)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE project = $1 AND revoked_at IS NULL")
        .bind(slug)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    audit(conn, actor, change("project.delete", "project", slug, Some(slug), json!({}))).await
}

async fn insert_environment(
    conn: &mut Conn,
    project: &str,
    name: &str,
    settings: &EnvironmentChange,
) -> Result<Option<Environment>> {
    Ok(sqlx::query_as::<_, Environment>(
        "INSERT INTO environments (project, name, region, budget_cents, created_at, quota_cpu_millis,
                                   quota_memory_mib, quota_storage_mib, quota_pods)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (project, name) DO NOTHING RETURNING *",
    )
    .bind(project)
    .bind(name)
    .bind(&settings.region)
    .bind(settings.budget_cents)
    .bind(now_ms())
    .bind(settings.quota_cpu_millis)
    .bind(settings.quota_memory_mib)
    .bind(settings.quota_storage_mib)
    .bind(settings.quota_pods)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn create_environment(
    conn: &mut Conn,
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
    audit(conn, actor, change("environment.create", "environment", &entity, Some(project), diff)).await?;
    Ok(environment)
}

pub async fn list_environments(conn: &mut Conn, project: &str) -> Result<Vec<Environment>> {
    require_project(conn, project).await?;
    Ok(
        sqlx::query_as::<_, Environment>("SELECT * FROM environments WHERE project = $1 ORDER BY name")
            .bind(project)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn get_environment(conn: &mut Conn, project: &str, name: &str) -> Result<Environment> {
    sqlx::query_as::<_, Environment>("SELECT * FROM environments WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "environment `{name}` does not exist in project `{project}`; create it with POST /v1/projects/{project}/environments"
            ))
        })
}

pub async fn update_environment(
    conn: &mut Conn,
    actor: &str,
    project: &str,
    name: &str,
    settings: &EnvironmentChange,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    let environment = sqlx::query_as::<_, Environment>(
        "UPDATE environments SET region = $3, budget_cents = $4, quota_cpu_millis = $5, quota_memory_mib = $6,
                                 quota_storage_mib = $7, quota_pods = $8
         WHERE project = $1 AND name = $2 RETURNING *",
    )
    .bind(project)
    .bind(name)
    .bind(&settings.region)
    .bind(settings.budget_cents)
    .bind(settings.quota_cpu_millis)
    .bind(settings.quota_memory_mib)
    .bind(settings.quota_storage_mib)
    .bind(settings.quota_pods)
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
    audit(conn, actor, change("environment.update", "environment", &entity, Some(project), diff)).await?;
    Ok(environment)
}

fn quota_json(settings: &EnvironmentChange) -> serde_json::Value {
    json!({"cpu_millis": settings.quota_cpu_millis, "memory_mib": settings.quota_memory_mib,
           "storage_mib": settings.quota_storage_mib, "pods": settings.quota_pods})
}

// --- services -----------------------------------------------------------------------------------

/// Creates or updates a service from its spec; every apply is a new spec version. Routes in the
/// spec are bound to the service, refusing any host and path another service holds.
pub async fn apply_service(
    conn: &mut Conn,
    actor: &str,
    draft: &ServiceDraft,
    routes: &[(String, String)],
) -> Result<(Service, bool)> {
    let (project, name) = (draft.project.as_str(), draft.name.as_str());
    require_project(conn, project).await?;
    get_environment(conn, project, &draft.environment).await?;
    let before = get_service(conn, project, name).await?;
    let now = now_ms();
    // The version comes from the row itself, so concurrent applies get consecutive versions.
    let service = sqlx::query_as::<_, Service>(
        "INSERT INTO services (project, name, environment, repository, branch, spec, spec_version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)
         ON CONFLICT (project, name) DO UPDATE SET environment = $3, repository = $4, branch = $5, spec = $6,
             spec_version = services.spec_version + 1, updated_at = $7
         RETURNING *",
    )
    .bind(project)
    .bind(name)
    .bind(&draft.environment)
    .bind(&draft.repository)
    .bind(&draft.branch)
    .bind(&draft.spec)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let version = service.spec_version;
    sqlx::query(
        "INSERT INTO service_spec_versions (project, service, version, spec, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(project)
    .bind(name)
    .bind(version)
    .bind(&draft.spec)
    .bind(now)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    for (index, (host, path)) in routes.iter().enumerate() {
        match find_route(conn, host, path).await? {
            Some(route) if route.project == project && route.service == name => {}
            Some(route) => {
                return Err(StoreError::Conflict(format!(
                    "spec.routes[{index}]: {} is already routed to {}; remove that route or choose another host or path",
                    route_label(host, path),
                    route_owner(&route, project)
                )));
            }
            None => {
                insert_route(conn, project, &draft.environment, name, host, path, true).await?;
            }
        }
    }
    let action = if before.is_some() { "service.update" } else { "service.create" };
    let diff = json!({
        "spec_version": {"from": before.as_ref().map(|s| s.spec_version), "to": version},
        "spec": {"from": before.as_ref().map(Service::spec_json), "to": service.spec_json()},
    });
    let entity = format!("{project}/{name}");
    audit(conn, actor, change(action, "service", &entity, Some(project), diff)).await?;
    Ok((service, before.is_none()))
}

pub async fn get_service(conn: &mut Conn, project: &str, name: &str) -> Result<Option<Service>> {
    Ok(sqlx::query_as::<_, Service>("SELECT * FROM services WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?)
}

pub async fn require_service(conn: &mut Conn, project: &str, name: &str) -> Result<Service> {
    get_service(conn, project, name).await?.ok_or_else(|| {
        StoreError::NotFound(format!(
            "service `{name}` does not exist in project `{project}`; create it by sending its Service Spec to PUT /v1/projects/{project}/services/{name}"
        ))
    })
}

pub async fn list_services(conn: &mut Conn, project: &str) -> Result<Vec<Service>> {
    require_project(conn, project).await?;
    Ok(
        sqlx::query_as::<_, Service>("SELECT * FROM services WHERE project = $1 ORDER BY name")
            .bind(project)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn spec_versions(conn: &mut Conn, project: &str, name: &str) -> Result<Vec<SpecVersion>> {
    require_service(conn, project, name).await?;
    Ok(sqlx::query_as::<_, SpecVersion>(
        "SELECT version, spec, created_at, created_by FROM service_spec_versions
         WHERE project = $1 AND service = $2 ORDER BY version DESC",
    )
    .bind(project)
    .bind(name)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn delete_service(conn: &mut Conn, actor: &str, project: &str, name: &str) -> Result<()> {
    require_service(conn, project, name).await?;
    sqlx::query("DELETE FROM services WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    // A service created again under the name starts without the old one's secrets.
    sqlx::query("DELETE FROM secrets WHERE project = $1 AND service = $2")
        .bind(project)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let entity = format!("{project}/{name}");
    audit(conn, actor, change("service.delete", "service", &entity, Some(project), json!({}))).await
}

pub async fn services_for_repository(conn: &mut Conn, repository: &str) -> Result<Vec<Service>> {
    Ok(
        sqlx::query_as::<_, Service>("SELECT * FROM services WHERE repository = $1 ORDER BY project, name")
            .bind(repository)
            .fetch_all(&mut *conn)
            .await?,
    )
}

// --- releases and builds ------------------------------------------------------------------------

pub async fn get_release(conn: &mut Conn, id: i64) -> Result<Release> {
    sqlx::query_as::<_, Release>("SELECT * FROM releases WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("release {id} does not exist")))
}

pub async fn list_releases(conn: &mut Conn, project: &str, service: &str, limit: i64) -> Result<Vec<Release>> {
    require_service(conn, project, service).await?;
    Ok(sqlx::query_as::<_, Release>(
        "SELECT * FROM releases WHERE project = $1 AND service = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(project)
    .bind(service)
    .bind(limit.clamp(1, 500))
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn list_project_releases(conn: &mut Conn, project: &str, limit: i64) -> Result<Vec<Release>> {
    require_project(conn, project).await?;
    Ok(
        sqlx::query_as::<_, Release>("SELECT * FROM releases WHERE project = $1 ORDER BY id DESC LIMIT $2")
            .bind(project)
            .bind(limit.clamp(1, 500))
            .fetch_all(&mut *conn)
            .await?,
    )
}

fn spec_text(spec: &serde_json::Value, pointer: &str) -> Option<String> {
    spec.pointer(pointer).and_then(|v| v.as_str()).map(str::to_string)
}

/// The release for one commit of a service in one environment, and the pipeline that builds it.
/// A push or API build of a commit that already has a live release is a no-op (`duplicate`); a
/// preview always rebuilds (its environment may have been torn down since).
pub async fn trigger_build(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
    actor: &str,
    trigger: &BuildTrigger,
) -> Result<(Release, PipelineEnqueued)> {
    let service = require_service(conn, &trigger.project, &trigger.service).await?;
    let (release, pipeline) = build_service(conn, jobs, &service, trigger).await?;
    if !pipeline.duplicate {
        let diff = json!({"service": trigger.service, "environment": release.environment,
                          "git_sha": trigger.git_sha, "pipeline": pipeline.id, "trigger": trigger.trigger});
        let entity = release.id.to_string();
        audit(conn, actor, change("release.build", "release", &entity, Some(&trigger.project), diff)).await?;
    }
    Ok((release, pipeline))
}

/// [`trigger_build`] for a service already loaded, without its audit event (a webhook writes one
/// event for the whole delivery).
async fn build_service(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
    service: &Service,
    trigger: &BuildTrigger,
) -> Result<(Release, PipelineEnqueued)> {
    let environment = trigger.deploy_to.clone().unwrap_or_else(|| service.environment.clone());
    let existing = sqlx::query_as::<_, Release>(
        "SELECT * FROM releases WHERE project = $1 AND service = $2 AND environment = $3 AND git_sha = $4",
    )
    .bind(&trigger.project)
    .bind(&trigger.service)
    .bind(&environment)
    .bind(&trigger.git_sha)
    .fetch_optional(&mut *conn)
    .await?;
    let rebuild = trigger.trigger == "pull_request";
    if let Some(release) = &existing
        && !rebuild
        && matches!(release.status.as_str(), release_status::BUILDING | release_status::READY)
    {
        let pipeline = PipelineEnqueued {
            id: release.pipeline_id.unwrap_or_default(),
            duplicate: true,
            superseded: vec![],
        };
        return Ok((release.clone(), pipeline));
    }
    let spec = service.spec_json();
    let repository = spec_text(&spec, "/spec/source/git/repository")
        .ok_or_else(|| StoreError::Invalid(format!("service `{}` has no spec.source.git.repository to build from", service.name)))?;
    let image = spec_text(&spec, "/spec/runtime/image")
        .map(|template| template.replace("{{ git.sha }}", &trigger.git_sha).replace("{{git.sha}}", &trigger.git_sha))
        .unwrap_or_else(|| format!("{}/{}:{}", trigger.project, trigger.service, trigger.git_sha));
    let request = BuildRequest {
        project: trigger.project.clone(),
        service: trigger.service.clone(),
        repository: repository.clone(),
        branch: trigger.branch.clone(),
        commit: trigger.git_sha.clone(),
        dockerfile: spec_text(&spec, "/spec/build/dockerfile").unwrap_or_else(|| "Dockerfile".into()),
        context: spec_text(&spec, "/spec/build/context").unwrap_or_else(|| ".".into()),
        image: image.clone(),
        deploy_to: trigger.deploy_to.clone(),
    };
    let mut pipeline = build_and_deploy(&request)?;
    // Per incarnation of the service: one deleted and created again builds its commits anew.
    pipeline.unique_key = pipeline.unique_key.map(|key| format!("{key}@{}", service.created_at));
    if rebuild || existing.is_some() {
        // Release-level dedup above decides; the per-commit key would refuse a deliberate rebuild.
        pipeline.unique_key = None;
    }
    let enqueued = jobs.pipeline(conn, pipeline).await?;
    let now = now_ms();
    let release = sqlx::query_as::<_, Release>(
        "INSERT INTO releases (project, service, environment, git_sha, repository, branch, image, status, pipeline_id,
                               trigger, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         ON CONFLICT (project, service, environment, git_sha) DO UPDATE SET
             status = $8, failure = NULL, pipeline_id = $9, trigger = $10, image = $7, updated_at = $11,
             digest = NULL, sbom_uri = NULL, signature = NULL, builder = NULL
         RETURNING *",
    )
    .bind(&trigger.project)
    .bind(&trigger.service)
    .bind(&environment)
    .bind(&trigger.git_sha)
    .bind(&repository)
    .bind(&trigger.branch)
    .bind(&image)
    .bind(release_status::BUILDING)
    .bind(enqueued.id)
    .bind(&trigger.trigger)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    // A rebuild starts its provenance afresh: no step of the earlier run stays on the release.
    sqlx::query("DELETE FROM release_steps WHERE release_id = $1")
        .bind(release.id)
        .execute(&mut *conn)
        .await?;
    mark_superseded(conn, &enqueued.superseded, Some(release.id)).await?;
    Ok((release, enqueued))
}

/// Marks the releases of superseded runs; `by_release` is the release that took over (none for a
/// preview teardown).
async fn mark_superseded(conn: &mut Conn, pipelines: &[i64], by_release: Option<i64>) -> Result<()> {
    let reason = match by_release {
        Some(id) => format!("superseded by release {id}"),
        None => "superseded: the preview was torn down".to_string(),
    };
    for pipeline in pipelines {
        sqlx::query(
            "UPDATE releases SET status = 'superseded', failure = $2, updated_at = $3
             WHERE pipeline_id = $1 AND status = 'building' AND id <> $4",
        )
        .bind(pipeline)
        .bind(&reason)
        .bind(now_ms())
        .bind(by_release.unwrap_or(0))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records the outcome of a release's pipeline (called by the build workers).
pub async fn finish_release(conn: &mut Conn, id: i64, outcome: &ReleaseOutcome) -> Result<Release> {
    let release = get_release(conn, id).await?;
    if release.status != release_status::BUILDING {
        return Err(StoreError::Conflict(format!(
            "release {id} is {}, not building; a release is immutable once finished",
            release.status
        )));
    }
    let (status, failure) = match &outcome.failure {
        None => (release_status::READY, None),
        Some(message) => (release_status::FAILED, Some(message.as_str())),
    };
    sqlx::query_as::<_, Release>(
        "UPDATE releases SET status = $2, failure = $3, digest = $4, sbom_uri = $5, signature = $6, updated_at = $7
         WHERE id = $1 AND status = 'building' RETURNING *",
    )
    .bind(id)
    .bind(status)
    .bind(failure)
    .bind(&outcome.digest)
    .bind(&outcome.sbom_uri)
    .bind(&outcome.signature)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Conflict(format!("release {id} finished concurrently; a finished release is immutable")))
}

/// The release a pipeline run builds.
pub async fn release_for_pipeline(conn: &mut Conn, pipeline_id: i64) -> Result<Release> {
    sqlx::query_as::<_, Release>("SELECT * FROM releases WHERE pipeline_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(pipeline_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no release is built by pipeline {pipeline_id}")))
}

/// Records an artefact of a building release; the statement that brings the last of digest, SBOM
/// and signature also makes the release `ready` (one statement, so two steps finishing together
/// cannot both miss each other). A release that is no longer building is left alone.
async fn record_artefact(conn: &mut Conn, id: i64, pipeline_id: i64, artefact: &Artefact) -> Result<Release> {
    let (mut digest, mut image, mut builder, mut sbom, mut signature) = (None, None, None, None, None);
    match artefact {
        Artefact::Image { digest: d, image: i, builder: b } => (digest, image, builder) = (Some(d), Some(i), Some(b)),
        Artefact::Sbom { uri } => sbom = Some(uri),
        Artefact::Signature { reference } => signature = Some(reference),
    }
    // NULL parameters leave their column alone; SBOM and signature need the digest first.
    let updated = sqlx::query_as::<_, Release>(
        "UPDATE releases SET digest = COALESCE($2, digest), image = COALESCE($3, image),
             builder = COALESCE($4, builder), sbom_uri = COALESCE($5, sbom_uri),
             signature = COALESCE($6, signature), updated_at = $7,
             status = CASE WHEN COALESCE($2, digest) IS NOT NULL AND COALESCE($5, sbom_uri) IS NOT NULL
                            AND COALESCE($6, signature) IS NOT NULL THEN 'ready' ELSE status END
         WHERE id = $1 AND status = 'building' AND COALESCE($2, digest) IS NOT NULL AND pipeline_id = $8
         RETURNING *",
    )
    .bind(id)
    .bind(digest)
    .bind(image)
    .bind(builder)
    .bind(sbom)
    .bind(signature)
    .bind(now_ms())
    .bind(pipeline_id)
    .fetch_optional(&mut *conn)
    .await?;
    match updated {
        Some(release) => Ok(release),
        None => {
            let release = get_release(conn, id).await?;
            Err(StoreError::Conflict(format!(
                "release {id} is {} (digest {}, run {:?}); artefacts are recorded only by its current run, while it is building, after its image is pushed",
                release.status,
                release.digest.as_deref().unwrap_or("not yet known"),
                release.pipeline_id
            )))
        }
    }
}

/// Starts (or restarts, on a later attempt) a release's pipeline step.
pub async fn start_release_step(conn: &mut Conn, release_id: i64, step: &str, job_id: i64, attempt: i32) -> Result<()> {
    sqlx::query(
        "INSERT INTO release_steps (release_id, step, job_id, attempt, status, started_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (release_id, step) DO UPDATE SET job_id = $3, attempt = $4, status = $5, started_at = $6,
             finished_at = NULL, detail = NULL, log_uri = NULL",
    )
    .bind(release_id)
    .bind(step)
    .bind(job_id)
    .bind(attempt)
    .bind(step_status::RUNNING)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends a release's pipeline step as started by `attempt` (job id, attempt number; a stale attempt
/// changes nothing) and records the artefact it produced, in the caller's transaction: a release
/// is never `ready` while the step that made it so still shows as running.
pub async fn finish_release_step(conn: &mut Conn, release_id: i64, attempt: (i64, i32), end: &StepEnd<'_>) -> Result<()> {
    if let Some((pipeline_id, artefact)) = end.artefact {
        record_artefact(conn, release_id, pipeline_id, artefact).await?;
    }
    sqlx::query(
        "UPDATE release_steps SET status = $3, finished_at = $4, detail = $5, log_uri = $6
         WHERE release_id = $1 AND step = $2 AND job_id = $7 AND attempt = $8",
    )
    .bind(release_id)
    .bind(end.step)
    .bind(end.status)
    .bind(now_ms())
    .bind(end.detail)
    .bind(end.log_uri)
    .bind(attempt.0)
    .bind(attempt.1)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn release_steps(conn: &mut Conn, release_id: i64) -> Result<Vec<ReleaseStep>> {
    Ok(
        sqlx::query_as::<_, ReleaseStep>("SELECT * FROM release_steps WHERE release_id = $1 ORDER BY started_at, step")
            .bind(release_id)
            .fetch_all(&mut *conn)
            .await?,
    )
}

// --- job logs -------------------------------------------------------------------------------------

/// The last sequence number of a job's log (0 when it has none).
pub async fn last_log_seq(conn: &mut Conn, job_id: i64) -> Result<i64> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM job_logs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Appends lines (numbered by the caller, who holds the job's lease) in one statement.
pub async fn append_log(conn: &mut Conn, lines: &[LogLine]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut builder = sqlx::QueryBuilder::new("INSERT INTO job_logs (job_id, seq, at, line) ");
    builder.push_values(lines, |mut row, line| {
        row.push_bind(line.job_id).push_bind(line.seq).push_bind(line.at).push_bind(&line.line);
    });
    builder.push(" ON CONFLICT (job_id, seq) DO NOTHING");
    builder.build().execute(&mut *conn).await?;
    Ok(())
}

/// Lines of a job's log after `after_seq`, oldest first.
pub async fn read_log(conn: &mut Conn, job_id: i64, after_seq: i64, limit: i64) -> Result<Vec<LogLine>> {
    Ok(sqlx::query_as::<_, LogLine>(
        "SELECT * FROM job_logs WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Deletes log lines written before `cutoff_ms` (their archive in S3 stays); returns how many.
pub async fn prune_logs(conn: &mut Conn, cutoff_ms: i64) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM job_logs WHERE at < $1")
        .bind(cutoff_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

// --- deployments --------------------------------------------------------------------------------

pub async fn create_deployment(
    conn: &mut Conn,
    jobs: &Jobs<'_>,
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
    let deployment = sqlx::query_as::<_, Deployment>(
        "INSERT INTO deployments (project, service, environment, release_id, strategy, status, reason, created_at,
                                  updated_at, created_by)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7, $8) RETURNING *",
    )
    .bind(project)
    .bind(service)
    .bind(&request.environment)
    .bind(release.id)
    .bind(&request.strategy)
    .bind(&request.reason)
    .bind(now)
    .bind(actor)
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
    let job_id = jobs.job(conn, job).await?;
    let deployment = sqlx::query_as::<_, Deployment>("UPDATE deployments SET job_id = $2 WHERE id = $1 RETURNING *")
        .bind(deployment.id)
        .bind(job_id)
        .fetch_one(&mut *conn)
        .await?;
    let diff = json!({"service": service, "environment": request.environment, "release": release.id,
                      "strategy": request.strategy, "job": job_id});
    let action = if request.reason == "rollback" { "deployment.rollback" } else { "deployment.create" };
    let entity = deployment.id.to_string();
    audit(conn, actor, change(action, "deployment", &entity, Some(project), diff)).await?;
    Ok(deployment)
}

/// Only a ready, signed release deploys (the deploy policy: an image runs only with the cosign
/// signature its pipeline made).
fn check_deployable(release: &Release) -> Result<()> {
    if release.status != release_status::READY {
        return Err(StoreError::Conflict(format!(
            "release {} is {}, not ready; only ready releases can be deployed{}",
            release.id,
            release.status,
            if release.status == release_status::BUILDING { " (wait for its pipeline to finish)" } else { "" }
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
pub async fn pipeline_deployment(
    conn: &mut Conn,
    job_id: i64,
    project: &str,
    deploy: &enclii_domain::jobs::Deploy,
    strategy: &str,
) -> Result<Deployment> {
    if let Some(existing) = sqlx::query_as::<_, Deployment>("SELECT * FROM deployments WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(existing);
    }
    let release = sqlx::query_as::<_, Release>(
        "SELECT * FROM releases WHERE project = $1 AND service = $2 AND environment = $3 AND git_sha = $4",
    )
    .bind(project)
    .bind(&deploy.service)
    .bind(&deploy.environment)
    .bind(&deploy.commit)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::NotFound(format!(
            "no release of {project}/{} for commit {} in environment `{}`",
            deploy.service, deploy.commit, deploy.environment
        ))
    })?;
    check_deployable(&release)?;
    let now = now_ms();
    let deployment = sqlx::query_as::<_, Deployment>(
        "INSERT INTO deployments (project, service, environment, release_id, strategy, status, reason, job_id,
                                  created_at, updated_at, created_by)
         VALUES ($1, $2, $3, $4, $5, 'pending', 'deploy', $6, $7, $7, 'system:pipeline') RETURNING *",
    )
    .bind(project)
    .bind(&deploy.service)
    .bind(&deploy.environment)
    .bind(release.id)
    .bind(strategy)
    .bind(job_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"service": deploy.service, "environment": deploy.environment, "release": release.id,
                      "strategy": strategy, "job": job_id});
    let entity = deployment.id.to_string();
    audit(conn, "system:pipeline", change("deployment.create", "deployment", &entity, Some(project), diff)).await?;
    Ok(deployment)
}

/// Records a deployment's progress (audited); a finished deployment never changes again, so a
/// late or retried job cannot rewrite how it ended.
pub async fn update_deployment(
    conn: &mut Conn,
    actor: &str,
    id: i64,
    update: &DeploymentUpdate<'_>,
) -> Result<Deployment> {
    let before = get_deployment(conn, id).await?;
    if deployment_status::is_terminal(&before.status) {
        return Err(StoreError::Conflict(format!(
            "deployment {id} already ended as {}; start a new deployment instead",
            before.status
        )));
    }
    let now = now_ms();
    let finished = deployment_status::is_terminal(update.status).then_some(now);
    let deployment = sqlx::query_as::<_, Deployment>(
        "UPDATE deployments SET status = $2, detail = COALESCE($3, detail), canary_percent = $4,
                                url = COALESCE($5, url), updated_at = $6, finished_at = $7
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(update.status)
    .bind(&update.detail)
    .bind(update.canary_percent)
    .bind(&update.url)
    .bind(now)
    .bind(finished)
    .fetch_one(&mut *conn)
    .await?;
    if before.status != update.status || before.canary_percent != update.canary_percent {
        let diff = json!({"status": {"from": before.status, "to": update.status},
                          "canary_percent": update.canary_percent, "detail": update.detail});
        let entity = id.to_string();
        let action = format!("deployment.{}", update.status);
        audit(conn, actor, change(&action, "deployment", &entity, Some(&deployment.project), diff)).await?;
    }
    Ok(deployment)
}

/// Marks the service's other unfinished deployments in the environment superseded by `by`.
pub async fn supersede_deployments(conn: &mut Conn, by: &Deployment) -> Result<Vec<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE deployments SET status = 'superseded', detail = $5, updated_at = $6, finished_at = $6
         WHERE project = $1 AND environment = $2 AND service = $3 AND id <> $4
           AND status IN ('pending', 'running', 'canary')
         RETURNING id",
    )
    .bind(&by.project)
    .bind(&by.environment)
    .bind(&by.service)
    .bind(by.id)
    .bind(format!("superseded by deployment {}", by.id))
    .bind(now_ms())
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids)
}

/// The deployment serving the service in the environment now: the latest that succeeded.
pub async fn current_deployment(
    conn: &mut Conn,
    project: &str,
    environment: &str,
    service: &str,
) -> Result<Option<Deployment>> {
    Ok(sqlx::query_as::<_, Deployment>(
        "SELECT * FROM deployments WHERE project = $1 AND environment = $2 AND service = $3 AND status = 'succeeded'
         ORDER BY id DESC LIMIT 1",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The routes bound to the service in one environment.
pub async fn service_routes(conn: &mut Conn, project: &str, environment: &str, service: &str) -> Result<Vec<Route>> {
    Ok(sqlx::query_as::<_, Route>(
        "SELECT * FROM routes WHERE project = $1 AND environment = $2 AND service = $3 ORDER BY id",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .fetch_all(&mut *conn)
    .await?)
}

/// Binds a preview's host to the service (idempotent); refused if another service holds it.
pub async fn bind_preview_route(
    conn: &mut Conn,
    project: &str,
    environment: &str,
    service: &str,
    host: &str,
) -> Result<Route> {
    match find_route(conn, host, "/").await? {
        Some(route) if route.project == project && route.service == service && route.environment == environment => {
            Ok(route)
        }
        Some(route) => Err(StoreError::Conflict(format!(
            "{} is already routed to {}; the preview domain must be reserved for previews",
            route_label(host, "/"),
            route_owner(&route, project)
        ))),
        None => insert_route(conn, project, environment, service, host, "/", false).await,
    }
}

/// The secrets a service reads in an environment, by name: the narrowest scope wins (service in
/// the environment, then the service everywhere, the environment, the project).
pub async fn service_secrets(
    conn: &mut Conn,
    key: &MasterKey,
    project: &str,
    environment: &str,
    service: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = sqlx::query_as::<_, (String, String, String, i64, String)>(
        "SELECT s.environment, s.service, s.name, s.version, s.sealed FROM secrets s
         WHERE s.project = $1 AND s.environment IN ('', $2) AND s.service IN ('', $3) AND NOT s.deleted
           AND s.version = (SELECT MAX(t.version) FROM secrets t WHERE t.project = s.project
                            AND t.environment = s.environment AND t.service = s.service AND t.name = s.name)",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
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
        let value = key.open(&sealed, &scope.binding(&name, version))?;
        chosen.insert(name, (rank, value));
    }
    Ok(chosen.into_iter().map(|(name, (_, value))| (name, value)).collect())
}

/// Forgets what a torn-down preview held for one service: its routes, and its deployments end
/// as torn down. When no other service runs there any more, the environment itself goes with
/// its secrets. Releases stay (their provenance is history).
pub async fn forget_preview(
    conn: &mut Conn,
    actor: &str,
    project: &str,
    environment: &str,
    service: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM routes WHERE project = $1 AND environment = $2 AND service = $3")
        .bind(project)
        .bind(environment)
        .bind(service)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE deployments SET status = 'torn_down', updated_at = $4, finished_at = COALESCE(finished_at, $4)
         WHERE project = $1 AND environment = $2 AND service = $3 AND status IN ('pending', 'running', 'canary', 'succeeded')",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let still_running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deployments WHERE project = $1 AND environment = $2
           AND status IN ('pending', 'running', 'canary', 'succeeded')",
    )
    .bind(project)
    .bind(environment)
    .fetch_one(&mut *conn)
    .await?;
    let mut diff = json!({"service": service});
    if still_running == 0 {
        for statement in [
            "DELETE FROM routes WHERE project = $1 AND environment = $2",
            "DELETE FROM secrets WHERE project = $1 AND environment = $2",
        ] {
            sqlx::query(statement)
                .bind(project)
                .bind(environment)
                .execute(&mut *conn)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM environments WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(environment)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        diff["environment_removed"] = json!(deleted > 0);
    }
    let entity = format!("{project}/{environment}");
    audit(conn, actor, change("environment.teardown", "environment", &entity, Some(project), diff)).await
}

pub async fn get_deployment(conn: &mut Conn, id: i64) -> Result<Deployment> {
    sqlx::query_as::<_, Deployment>("SELECT * FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id} does not exist")))
}

pub async fn list_deployments(
    conn: &mut Conn,
    project: &str,
    service: Option<&str>,
    limit: i64,
) -> Result<Vec<Deployment>> {
    require_project(conn, project).await?;
    Ok(sqlx::query_as::<_, Deployment>(
        "SELECT * FROM deployments WHERE project = $1 AND ($2 IS NULL OR service = $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(project)
    .bind(service)
    .bind(limit.clamp(1, 500))
    .fetch_all(&mut *conn)
    .await?)
}

// --- secrets ------------------------------------------------------------------------------------

async fn check_scope(conn: &mut Conn, scope: &SecretScope) -> Result<()> {
    require_project(conn, &scope.project).await?;
    if let Some(environment) = &scope.environment {
        get_environment(conn, &scope.project, environment).await?;
    }
    if let Some(service) = &scope.service {
        require_service(conn, &scope.project, service).await?;
    }
    Ok(())
}

fn secret_entity(scope: &SecretScope, name: &str) -> String {
    format!("{}/{}/{}/{name}", scope.project, scope.environment_column(), scope.service_column())
}

async fn latest_secret_version(conn: &mut Conn, scope: &SecretScope, name: &str) -> Result<Option<(i64, bool)>> {
    Ok(sqlx::query_as::<_, (i64, bool)>(
        "SELECT version, deleted FROM secrets WHERE project = $1 AND environment = $2 AND service = $3 AND name = $4
         ORDER BY version DESC LIMIT 1",
    )
    .bind(&scope.project)
    .bind(scope.environment_column())
    .bind(scope.service_column())
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Stores a new version of a secret, sealed. The audit diff names the version, never the value.
pub async fn set_secret(
    conn: &mut Conn,
    key: &MasterKey,
    actor: &str,
    scope: &SecretScope,
    name: &str,
    value: &[u8],
) -> Result<SecretMeta> {
    check_scope(conn, scope).await?;
    let version = latest_secret_version(conn, scope, name).await?.map_or(1, |(v, _)| v + 1);
    let sealed = key.seal(value, &scope.binding(name, version))?;
    let meta = insert_secret_version(conn, actor, scope, name, version, Some(&sealed)).await?;
    let diff = json!({"version": version, "value": "<sealed>"});
    let entity = secret_entity(scope, name);
    audit(conn, actor, change("secret.set", "secret", &entity, Some(&scope.project), diff)).await?;
    Ok(meta)
}

async fn insert_secret_version(
    conn: &mut Conn,
    actor: &str,
    scope: &SecretScope,
    name: &str,
    version: i64,
    sealed: Option<&str>,
) -> Result<SecretMeta> {
    sqlx::query_as::<_, SecretMeta>(
        "INSERT INTO secrets (project, environment, service, name, version, sealed, deleted, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING project, environment, service, name, version, created_at, created_by",
    )
    .bind(&scope.project)
    .bind(scope.environment_column())
    .bind(scope.service_column())
    .bind(name)
    .bind(version)
    .bind(sealed)
    .bind(sealed.is_none())
    .bind(now_ms())
    .bind(actor)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "secret `{name}` was changed concurrently; send the request again"
        )),
        other => other,
    })
}

pub async fn delete_secret(conn: &mut Conn, actor: &str, scope: &SecretScope, name: &str) -> Result<()> {
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
    audit(conn, actor, change("secret.delete", "secret", &entity, Some(&scope.project), diff)).await
}

/// The latest version of each live secret, narrowed by environment and service when given.
pub async fn list_secrets(
    conn: &mut Conn,
    project: &str,
    environment: Option<&str>,
    service: Option<&str>,
) -> Result<Vec<SecretMeta>> {
    require_project(conn, project).await?;
    Ok(sqlx::query_as::<_, SecretMeta>(
        "SELECT s.project, s.environment, s.service, s.name, s.version, s.created_at, s.created_by FROM secrets s
         WHERE s.project = $1 AND ($2 IS NULL OR s.environment = $2) AND ($3 IS NULL OR s.service = $3)
           AND NOT s.deleted
           AND s.version = (SELECT MAX(t.version) FROM secrets t WHERE t.project = s.project
                            AND t.environment = s.environment AND t.service = s.service AND t.name = s.name)
         ORDER BY s.environment, s.service, s.name",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .fetch_all(&mut *conn)
    .await?)
}

/// A secret's current value, for the workers that inject it (never returned by the API).
pub async fn reveal_secret(conn: &mut Conn, key: &MasterKey, scope: &SecretScope, name: &str) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query_as::<_, (i64, Option<String>)>(
        "SELECT version, sealed FROM secrets WHERE project = $1 AND environment = $2 AND service = $3 AND name = $4
         ORDER BY version DESC LIMIT 1",
    )
    .bind(&scope.project)
    .bind(scope.environment_column())
    .bind(scope.service_column())
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((version, Some(sealed))) => Ok(Some(key.open(&sealed, &scope.binding(name, version))?)),
        _ => Ok(None),
    }
}

// --- routes -------------------------------------------------------------------------------------

fn route_label(host: &str, path: &str) -> String {
    format!("host `{host}` path `{path}`")
}

/// Who holds a route, as far as a caller of `asking_project` may know.
fn route_owner(route: &Route, asking_project: &str) -> String {
    if route.project == asking_project {
        format!("{}/{}/{} (route {})", route.project, route.environment, route.service, route.id)
    } else {
        "another project".into()
    }
}

async fn find_route(conn: &mut Conn, host: &str, path: &str) -> Result<Option<Route>> {
    Ok(sqlx::query_as::<_, Route>("SELECT * FROM routes WHERE host = $1 AND path = $2")
        .bind(host)
        .bind(path)
        .fetch_optional(&mut *conn)
        .await?)
}

async fn insert_route(
    conn: &mut Conn,
    project: &str,
    environment: &str,
    service: &str,
    host: &str,
    path: &str,
    tls: bool,
) -> Result<Route> {
    Ok(sqlx::query_as::<_, Route>(
        "INSERT INTO routes (project, environment, service, host, path, tls, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(project)
    .bind(environment)
    .bind(service)
    .bind(host)
    .bind(path)
    .bind(tls)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn add_route(conn: &mut Conn, actor: &str, new: &NewRoute) -> Result<Route> {
    require_service(conn, &new.project, &new.service).await?;
    get_environment(conn, &new.project, &new.environment).await?;
    if let Some(route) = find_route(conn, &new.host, &new.path).await? {
        return Err(StoreError::Conflict(format!(
            "{} is already routed to {}; remove that route first or choose another host or path",
            route_label(&new.host, &new.path),
            route_owner(&route, &new.project)
        )));
    }
    let route = insert_route(conn, &new.project, &new.environment, &new.service, &new.host, &new.path, new.tls).await?;
    let diff = json!({"host": route.host, "path": route.path, "service": route.service,
                      "environment": route.environment, "tls": route.tls});
    let entity = route.id.to_string();
    audit(conn, actor, change("route.create", "route", &entity, Some(&new.project), diff)).await?;
    Ok(route)
}

pub async fn list_routes(conn: &mut Conn, project: &str) -> Result<Vec<Route>> {
    require_project(conn, project).await?;
    Ok(
        sqlx::query_as::<_, Route>("SELECT * FROM routes WHERE project = $1 ORDER BY host, path")
            .bind(project)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn delete_route(conn: &mut Conn, actor: &str, project: &str, id: i64) -> Result<()> {
    let route = sqlx::query_as::<_, Route>("DELETE FROM routes WHERE id = $1 AND project = $2 RETURNING *")
        .bind(id)
        .bind(project)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("route {id} does not exist in project `{project}`")))?;
    let diff = json!({"host": route.host, "path": route.path, "service": route.service});
    audit(conn, actor, change("route.delete", "route", &id.to_string(), Some(project), diff)).await
}

// --- identity: role bindings and tokens ---------------------------------------------------------

pub async fn bind_role(conn: &mut Conn, actor: &str, subject: &str, project: &str, role: &str) -> Result<RoleBinding> {
    if project != "*" {
        require_project(conn, project).await?;
    }
    let before = sqlx::query_as::<_, (String,)>("SELECT role FROM role_bindings WHERE subject = $1 AND project = $2")
        .bind(subject)
        .bind(project)
        .fetch_optional(&mut *conn)
        .await?;
    let binding = sqlx::query_as::<_, RoleBinding>(
        "INSERT INTO role_bindings (subject, project, role, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (subject, project) DO UPDATE SET role = $3 RETURNING *",
    )
    .bind(subject)
    .bind(project)
    .bind(role)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"subject": subject, "role": {"from": before.map(|r| r.0), "to": role}});
    let scope = (project != "*").then_some(project);
    let entity = format!("{subject}@{project}");
    audit(conn, actor, change("role.bind", "role_binding", &entity, scope, diff)).await?;
    Ok(binding)
}

pub async fn unbind_role(conn: &mut Conn, actor: &str, subject: &str, project: &str) -> Result<()> {
    let removed = sqlx::query("DELETE FROM role_bindings WHERE subject = $1 AND project = $2")
        .bind(subject)
        .bind(project)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(StoreError::NotFound(format!("`{subject}` has no role on `{project}`")));
    }
    let scope = (project != "*").then_some(project);
    let entity = format!("{subject}@{project}");
    audit(conn, actor, change("role.unbind", "role_binding", &entity, scope, json!({}))).await
}

pub async fn roles_of(conn: &mut Conn, subject: &str) -> Result<Vec<RoleBinding>> {
    Ok(
        sqlx::query_as::<_, RoleBinding>("SELECT * FROM role_bindings WHERE subject = $1 ORDER BY project")
            .bind(subject)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn role_bindings(conn: &mut Conn, project: &str) -> Result<Vec<RoleBinding>> {
    Ok(sqlx::query_as::<_, RoleBinding>(
        "SELECT * FROM role_bindings WHERE project = $1 OR project = '*' ORDER BY project, subject",
    )
    .bind(project)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn count_role_bindings(conn: &mut Conn) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM role_bindings")
        .fetch_one(&mut *conn)
        .await?)
}

pub async fn insert_token(conn: &mut Conn, actor: &str, token: &TokenRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, secret_hash, subject, name, scopes, project, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&token.id)
    .bind(&token.secret_hash)
    .bind(&token.subject)
    .bind(&token.name)
    .bind(&token.scopes)
    .bind(&token.project)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(&mut *conn)
    .await?;
    let diff = json!({"subject": token.subject, "name": token.name, "scopes": token.scope_list(),
                      "project": token.project, "expires_at": token.expires_at});
    audit(conn, actor, change("token.create", "token", &token.id, token.project.as_deref(), diff)).await
}

pub async fn find_token(conn: &mut Conn, id: &str) -> Result<Option<TokenRecord>> {
    Ok(sqlx::query_as::<_, TokenRecord>("SELECT * FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
}

pub async fn list_tokens(conn: &mut Conn, subject: &str) -> Result<Vec<TokenRecord>> {
    Ok(
        sqlx::query_as::<_, TokenRecord>("SELECT * FROM api_tokens WHERE subject = $1 ORDER BY created_at DESC")
            .bind(subject)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn revoke_token(conn: &mut Conn, actor: &str, id: &str) -> Result<TokenRecord> {
    let token = sqlx::query_as::<_, TokenRecord>(
        "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING *",
    )
    .bind(id)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("token `{id}` does not exist or is already revoked")))?;
    audit(conn, actor, change("token.revoke", "token", id, token.project.as_deref(), json!({"subject": token.subject})))
        .await?;
    Ok(token)
}

// --- webhooks -----------------------------------------------------------------------------------

/// Persists a GitHub delivery and enqueues what it asks for, in one transaction. A delivery id
/// seen before changes nothing and answers with the first outcome.
pub async fn accept_webhook(conn: &mut Conn, jobs: &Jobs<'_>, delivery: &WebhookDelivery) -> Result<WebhookOutcome> {
    let repository = match &delivery.intent {
        WebhookIntent::Push { repository, .. }
        | WebhookIntent::Preview { repository, .. }
        | WebhookIntent::Teardown { repository, .. } => Some(repository.clone()),
        WebhookIntent::Ignore { .. } => None,
    };
    let fresh = sqlx::query_scalar::<_, String>(
        "INSERT INTO webhook_deliveries (delivery_id, event, action, repository, outcome, pipeline_ids, received_at)
         VALUES ($1, $2, $3, $4, 'accepted', '[]', $5) ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
    )
    .bind(&delivery.delivery_id)
    .bind(&delivery.event)
    .bind(&delivery.action)
    .bind(&repository)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    if fresh.is_none() {
        let earlier = get_delivery(conn, &delivery.delivery_id).await?;
        return Ok(WebhookOutcome {
            delivery_id: earlier.delivery_id.clone(),
            duplicate: true,
            outcome: earlier.outcome.clone(),
            pipelines: earlier.pipelines(),
            releases: vec![],
        });
    }
    let actor = "github";
    let mut pipelines = Vec::new();
    let mut releases = Vec::new();
    let mut projects = Vec::new();
    let outcome = match &delivery.intent {
        WebhookIntent::Ignore { outcome } => outcome.clone(),
        WebhookIntent::Push { repository, branch, sha } => {
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
                if service.branch.as_deref() != Some(branch.as_str()) {
                    continue;
                }
                let trigger = BuildTrigger {
                    project: service.project.clone(),
                    service: service.name.clone(),
                    git_sha: sha.clone(),
                    branch: branch.clone(),
                    deploy_to: Some(service.environment.clone()),
                    trigger: "push".into(),
                };
                let (release, pipeline) = build_service(conn, jobs, &service, &trigger).await?;
                releases.push(release.id);
                pipelines.push(pipeline.id);
                projects.push(service.project);
            }
            describe(&pipelines, "no service deploys this repository and branch", &delivery.rate_limited)
        }
        WebhookIntent::Preview { repository, number, branch, sha } => {
            let environment = format!("preview-{number}");
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
                insert_environment(conn, &service.project, &environment, &EnvironmentChange::default()).await?;
                let trigger = BuildTrigger {
                    project: service.project.clone(),
                    service: service.name.clone(),
                    git_sha: sha.clone(),
                    branch: branch.clone(),
                    deploy_to: Some(environment.clone()),
                    trigger: "pull_request".into(),
                };
                let (release, pipeline) = build_service(conn, jobs, &service, &trigger).await?;
                releases.push(release.id);
                pipelines.push(pipeline.id);
                projects.push(service.project);
            }
            describe(&pipelines, "no service builds from this repository", &delivery.rate_limited)
        }
        WebhookIntent::Teardown { repository, number, branch } => {
            let environment = format!("preview-{number}");
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
                match get_environment(conn, &service.project, &environment).await {
                    Ok(_) => {}
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
                let teardown = preview_teardown(&service.project, &service.name, repository, branch, *number)?;
                let enqueued = jobs.pipeline(conn, teardown).await?;
                mark_superseded(conn, &enqueued.superseded, None).await?;
                pipelines.push(enqueued.id);
                projects.push(service.project);
            }
            describe(&pipelines, "no preview exists for this pull request", &delivery.rate_limited)
        }
    };
    let project = projects.first().cloned();
    sqlx::query("UPDATE webhook_deliveries SET outcome = $2, pipeline_ids = $3, project = $4 WHERE delivery_id = $1")
        .bind(&delivery.delivery_id)
        .bind(&outcome)
        .bind(json!(pipelines).to_string())
        .bind(&project)
        .execute(&mut *conn)
        .await?;
    let diff = json!({"event": delivery.event, "action": delivery.action, "repository": repository,
                      "outcome": outcome, "pipelines": pipelines, "releases": releases});
    audit(
        conn,
        actor,
        change("webhook.receive", "delivery", &delivery.delivery_id, projects.first().map(String::as_str), diff),
    )
    .await?;
    Ok(WebhookOutcome {
        delivery_id: delivery.delivery_id.clone(),
        duplicate: false,
        outcome,
        pipelines,
        releases,
    })
}

/// The services building from `repository`, without those of rate-limited projects.
async fn admitted(conn: &mut Conn, repository: &str, rate_limited: &[String]) -> Result<Vec<Service>> {
    let mut services = services_for_repository(conn, repository).await?;
    services.retain(|s| !rate_limited.contains(&s.project));
    Ok(services)
}

fn describe(pipelines: &[i64], nothing: &str, rate_limited: &[String]) -> String {
    let mut outcome = if pipelines.is_empty() {
        format!("ignored: {nothing}")
    } else {
        format!("enqueued {} pipeline(s)", pipelines.len())
    };
    if !rate_limited.is_empty() {
        outcome.push_str(&format!("; skipped rate-limited project(s): {}", rate_limited.join(", ")));
    }
    outcome
}

pub async fn get_delivery(conn: &mut Conn, id: &str) -> Result<Delivery> {
    sqlx::query_as::<_, Delivery>("SELECT * FROM webhook_deliveries WHERE delivery_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("delivery `{id}` was never received")))
}

pub async fn list_deliveries(conn: &mut Conn, project: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
    Ok(sqlx::query_as::<_, Delivery>(
        "SELECT * FROM webhook_deliveries WHERE ($1 IS NULL OR project = $1) ORDER BY received_at DESC LIMIT $2",
    )
    .bind(project)
    .bind(limit.clamp(1, 500))
    .fetch_all(&mut *conn)
    .await?)
}

fn change<'a>(
    action: &'a str,
    entity_type: &'a str,
    entity: &str,
    project: Option<&'a str>,
    diff: serde_json::Value,
) -> Change<'a> {
    Change {
        action,
        entity_type,
        entity: entity.to_string(),
        project,
        diff,
    }
}
