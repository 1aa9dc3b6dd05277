//! Releases: builds triggered by hand or by webhooks, their pipelines' steps and outcomes.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::require_project;
use crate::services::require_service;
use crate::{Store, now_ms};
use enclii_domain::pipeline::{BuildRequest, build_and_deploy};
use enclii_queue::PipelineEnqueued;

pub(crate) async fn get_release(conn: &mut Conn<'_>, id: i64) -> Result<Release> {
    query_as::<Release>("SELECT * FROM releases WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("release {id} does not exist")))
}

pub(crate) async fn list_releases(
    conn: &mut Conn<'_>,
    project: &str,
    service: &str,
    limit: i64,
) -> Result<Vec<Release>> {
    require_service(conn, project, service).await?;
    query_as::<Release>("SELECT * FROM releases WHERE project = $1 AND service = $2 ORDER BY id DESC LIMIT $3")
        .binds((project, service, limit.clamp(1, 500)))
        .fetch_all(&mut *conn)
        .await
}

pub(crate) async fn list_project_releases(conn: &mut Conn<'_>, project: &str, limit: i64) -> Result<Vec<Release>> {
    require_project(conn, project).await?;
    query_as::<Release>("SELECT * FROM releases WHERE project = $1 ORDER BY id DESC LIMIT $2")
        .binds((project, limit.clamp(1, 500)))
        .fetch_all(&mut *conn)
        .await
}

/// The release for one commit of a service in one environment, and the pipeline that builds it.
/// A push or API build of a commit that already has a live release is a no-op (`duplicate`); a
/// preview always rebuilds (its environment may have been torn down since).
pub(crate) async fn trigger_build(
    conn: &mut Conn<'_>,
    actor: &str,
    trigger: &BuildTrigger,
) -> Result<(Release, PipelineEnqueued)> {
    let service = require_service(conn, &trigger.project, &trigger.service).await?;
    let (release, pipeline) = build_service(conn, &service, trigger).await?;
    if !pipeline.duplicate {
        let diff = json!({"service": trigger.service, "environment": release.environment,
                          "git_sha": trigger.git_sha, "pipeline": pipeline.id, "trigger": trigger.trigger});
        let entity = release.id.to_string();
        audit(
            conn,
            actor,
            change("release.build", "release", &entity, Some(&trigger.project), diff),
        )
        .await?;
    }
    Ok((release, pipeline))
}

/// [`trigger_build`] for a service already loaded, without its audit event (a webhook writes one
/// event for the whole delivery).
pub(crate) async fn build_service(
    conn: &mut Conn<'_>,
    service: &Service,
    trigger: &BuildTrigger,
) -> Result<(Release, PipelineEnqueued)> {
    let environment = trigger.deploy_to.clone().unwrap_or_else(|| service.environment.clone());
    let existing = query_as::<Release>(
        "SELECT * FROM releases WHERE project = $1 AND service = $2 AND environment = $3 AND git_sha = $4",
    )
    .binds((&trigger.project, &trigger.service, &environment, &trigger.git_sha))
    .fetch_optional(&mut *conn)
    .await?;
    let rebuild = trigger.trigger == ReleaseTrigger::PullRequest;
    if let Some(release) = &existing
        && !rebuild
        && matches!(release.status, ReleaseStatus::Building | ReleaseStatus::Ready)
    {
        let pipeline = PipelineEnqueued {
            id: release.pipeline_id.unwrap_or_default(),
            duplicate: true,
            superseded: vec![],
        };
        return Ok((release.clone(), pipeline));
    }
    start_build(conn, service, trigger, &environment, rebuild || existing.is_some()).await
}

/// Enqueues the pipeline of a commit and points the commit's release for `environment` at it:
/// created, or — a rebuild — reset to `building` without the artefacts and steps of its earlier
/// run; the releases of the runs it superseded are marked. Also how an orphaned release is built
/// again (`orphans.rs`), so every build of a release starts here.
pub(crate) async fn start_build(
    conn: &mut Conn<'_>,
    service: &Service,
    trigger: &BuildTrigger,
    environment: &str,
    rebuild: bool,
) -> Result<(Release, PipelineEnqueued)> {
    let spec = service.typed_spec()?.spec;
    let repository = spec.source.map(|source| source.git.repository).ok_or_else(|| {
        StoreError::Invalid(format!(
            "service `{}` has no spec.source.git.repository to build from",
            service.name
        ))
    })?;
    let image = spec
        .runtime
        .image
        .map(|template| {
            template
                .replace("{{ git.sha }}", &trigger.git_sha)
                .replace("{{git.sha}}", &trigger.git_sha)
        })
        .unwrap_or_else(|| format!("{}/{}:{}", trigger.project, trigger.service, trigger.git_sha));
    let request = BuildRequest {
        project: trigger.project.clone(),
        service: trigger.service.clone(),
        repository: repository.clone(),
        branch: trigger.branch.clone(),
        commit: trigger.git_sha.clone(),
        dockerfile: spec.build.dockerfile,
        context: spec.build.context,
        image: image.clone(),
        deploy_to: trigger.deploy_to.clone(),
    };
    let mut pipeline = build_and_deploy(&request)?;
    // Per incarnation of the service: one deleted and created again builds its commits anew.
    pipeline.unique_key = pipeline.unique_key.map(|key| format!("{key}@{}", service.created_at));
    if rebuild {
        // Release-level dedup decides; the per-commit key would refuse a deliberate rebuild.
        pipeline.unique_key = None;
    }
    let enqueued = conn.enqueue_pipeline(pipeline).await?;
    let now = now_ms();
    let release = query_as::<Release>(
        "INSERT INTO releases (project, service, environment, git_sha, repository, branch, image, status, pipeline_id,
                               trigger, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         ON CONFLICT (project, service, environment, git_sha) DO UPDATE SET
             status = $8, failure = NULL, pipeline_id = $9, trigger = $10, image = $7, updated_at = $11,
             digest = NULL, sbom_uri = NULL, signature = NULL, builder = NULL
         RETURNING *",
    )
    .binds((
        &trigger.project,
        &trigger.service,
        environment,
        &trigger.git_sha,
        &repository,
        &trigger.branch,
        &image,
        ReleaseStatus::Building,
        enqueued.id,
        trigger.trigger,
        now,
    ))
    .fetch_one(&mut *conn)
    .await?;
    // A rebuild starts its provenance afresh: no step of the earlier run stays on the release.
    // A first build under a fresh unique key has no earlier run: any other build of this commit
    // would hold the same key (and find it taken) or was a rebuild of a release already there,
    // which `build_service` would have seen.
    let first_build = !rebuild && !enqueued.duplicate;
    if !first_build {
        query("DELETE FROM release_steps WHERE release_id = $1")
            .bind(release.id)
            .execute(&mut *conn)
            .await?;
    }
    mark_superseded(conn, &enqueued.superseded, Some(release.id)).await?;
    Ok((release, enqueued))
}

/// Marks the releases of superseded runs; `by_release` is the release that took over (none for a
/// preview teardown).
pub(crate) async fn mark_superseded(conn: &mut Conn<'_>, pipelines: &[i64], by_release: Option<i64>) -> Result<()> {
    let reason = match by_release {
        Some(id) => format!("superseded by release {id}"),
        None => "superseded: the preview was torn down".to_string(),
    };
    for pipeline in pipelines {
        query(
            "UPDATE releases SET status = 'superseded', failure = $2, updated_at = $3
             WHERE pipeline_id = $1 AND status = 'building' AND id <> $4",
        )
        .binds((pipeline, &reason, now_ms(), by_release.unwrap_or(0)))
        .execute(&mut *conn)
        .await?;
        // The run's own deploy step, cancelled with the run, ends its deployment no more: it
        // would stay `running` for ever. (Deployments made through the API have jobs of their
        // own and go on; the newer release's deploy supersedes them when it starts.)
        query(
            "UPDATE deployments SET status = 'superseded', detail = $2, updated_at = $3, finished_at = $3
             WHERE created_by = 'system:pipeline' AND status IN ('pending', 'running')
               AND release_id IN (SELECT id FROM releases WHERE pipeline_id = $1 AND id <> $4)",
        )
        .binds((pipeline, &reason, now_ms(), by_release.unwrap_or(0)))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records the outcome of a release's pipeline (called by the build workers).
pub(crate) async fn finish_release(conn: &mut Conn<'_>, id: i64, outcome: &ReleaseOutcome) -> Result<Release> {
    let release = get_release(conn, id).await?;
    if release.status != ReleaseStatus::Building {
        return Err(StoreError::Conflict(format!(
            "release {id} is {}, not building; a release is immutable once finished",
            release.status
        )));
    }
    let (status, failure) = match &outcome.failure {
        None => (ReleaseStatus::Ready, None),
        Some(message) => (ReleaseStatus::Failed, Some(message.as_str())),
    };
    query_as::<Release>(
        "UPDATE releases SET status = $2, failure = $3, digest = $4, sbom_uri = $5, signature = $6, updated_at = $7
         WHERE id = $1 AND status = 'building' RETURNING *",
    )
    .binds((
        id,
        status,
        failure,
        &outcome.digest,
        &outcome.sbom_uri,
        &outcome.signature,
        now_ms(),
    ))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::Conflict(format!(
            "release {id} finished concurrently; a finished release is immutable"
        ))
    })
}

/// The release a pipeline run builds.
pub(crate) async fn release_for_pipeline(conn: &mut Conn<'_>, pipeline_id: i64) -> Result<Release> {
    query_as::<Release>("SELECT * FROM releases WHERE pipeline_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(pipeline_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no release is built by pipeline {pipeline_id}")))
}

/// Records an artefact of a building release; the statement that brings the last of digest, SBOM
/// and signature also makes the release `ready` (one statement, so two steps finishing together
/// cannot both miss each other). A release that is no longer building is left alone.
pub(crate) async fn record_artefact(
    conn: &mut Conn<'_>,
    id: i64,
    pipeline_id: i64,
    artefact: &Artefact,
) -> Result<Release> {
    let (mut digest, mut image, mut builder, mut sbom, mut signature) = (None, None, None, None, None);
    match artefact {
        Artefact::Image {
            digest: d,
            image: i,
            builder: b,
        } => (digest, image, builder) = (Some(d), Some(i), Some(b)),
        Artefact::Sbom { uri } => sbom = Some(uri),
        Artefact::Signature { reference } => signature = Some(reference),
    }
    // NULL parameters leave their column alone; SBOM and signature need the digest first.
    let updated = query_as::<Release>(
        "UPDATE releases SET digest = COALESCE($2, digest), image = COALESCE($3, image),
             builder = COALESCE($4, builder), sbom_uri = COALESCE($5, sbom_uri),
             signature = COALESCE($6, signature), updated_at = $7,
             status = CASE WHEN COALESCE($2, digest) IS NOT NULL AND COALESCE($5, sbom_uri) IS NOT NULL
                            AND COALESCE($6, signature) IS NOT NULL THEN 'ready' ELSE status END
         WHERE id = $1 AND status = 'building' AND COALESCE($2, digest) IS NOT NULL AND pipeline_id = $8
         RETURNING *",
    )
    .binds((id, digest, image, builder, sbom, signature, now_ms(), pipeline_id))
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
pub(crate) async fn start_release_step(
    conn: &mut Conn<'_>,
    release_id: i64,
    step: &str,
    job_id: i64,
    attempt: i32,
) -> Result<()> {
    query(
        "INSERT INTO release_steps (release_id, step, job_id, attempt, status, started_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (release_id, step) DO UPDATE SET job_id = $3, attempt = $4, status = $5, started_at = $6,
             finished_at = NULL, detail = NULL, log_uri = NULL",
    )
    .binds((release_id, step, job_id, attempt, StepStatus::Running, now_ms()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends a release's pipeline step as started by `attempt` (job id, attempt number; a stale attempt
/// changes nothing) and records the artefact it produced, in the caller's transaction: a release
/// is never `ready` while the step that made it so still shows as running.
pub(crate) async fn finish_release_step(
    conn: &mut Conn<'_>,
    release_id: i64,
    attempt: (i64, i32),
    end: &StepEnd<'_>,
) -> Result<()> {
    if let Some((pipeline_id, artefact)) = end.artefact {
        record_artefact(conn, release_id, pipeline_id, artefact).await?;
    }
    query(
        "UPDATE release_steps SET status = $3, finished_at = $4, detail = $5, log_uri = $6
         WHERE release_id = $1 AND step = $2 AND job_id = $7 AND attempt = $8",
    )
    .binds((
        release_id,
        end.step,
        end.status,
        now_ms(),
        end.detail,
        end.log_uri,
        attempt.0,
        attempt.1,
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn release_steps(conn: &mut Conn<'_>, release_id: i64) -> Result<Vec<ReleaseStep>> {
    query_as::<ReleaseStep>("SELECT * FROM release_steps WHERE release_id = $1 ORDER BY started_at, step")
        .bind(release_id)
        .fetch_all(&mut *conn)
        .await
}

impl Store {
    pub async fn trigger_build(&self, actor: &str, trigger: &BuildTrigger) -> Result<(Release, PipelineEnqueued)> {
        self.write(async |conn| trigger_build(conn, actor, trigger).await).await
    }
    pub async fn release(&self, id: i64) -> Result<Release> {
        self.read(async |conn| get_release(conn, id).await).await
    }
    pub async fn list_releases(&self, project: &str, service: Option<&str>, limit: i64) -> Result<Vec<Release>> {
        match service {
            Some(service) => {
                self.read(async |conn| list_releases(conn, project, service, limit).await)
                    .await
            }
            None => {
                self.read(async |conn| list_project_releases(conn, project, limit).await)
                    .await
            }
        }
    }
    /// Records how a release's pipeline ended; a finished release never changes again.
    pub async fn finish_release(&self, id: i64, outcome: &ReleaseOutcome) -> Result<Release> {
        self.write(async |conn| finish_release(conn, id, outcome).await).await
    }
    pub async fn release_for_pipeline(&self, pipeline_id: i64) -> Result<Release> {
        self.read(async |conn| release_for_pipeline(conn, pipeline_id).await)
            .await
    }
    pub async fn start_release_step(&self, release_id: i64, step: &str, job_id: i64, attempt: i32) -> Result<()> {
        self.write(async |conn| start_release_step(conn, release_id, step, job_id, attempt).await)
            .await
    }
    /// Ends a step as started by `attempt` (job id, attempt number), with its artefact; see
    /// [`StepEnd`].
    pub async fn finish_release_step(&self, release_id: i64, attempt: (i64, i32), end: &StepEnd<'_>) -> Result<()> {
        self.write(async |conn| finish_release_step(conn, release_id, attempt, end).await)
            .await
    }
    pub async fn release_steps(&self, release_id: i64) -> Result<Vec<ReleaseStep>> {
        self.read(async |conn| release_steps(conn, release_id).await).await
    }
}
