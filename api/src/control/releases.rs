//! Releases: list, build a commit, read one with its provenance; a project's pipeline runs and
//! GitHub deliveries. A `building` release is shown with why it waits, when no worker can run
//! its next step (`waiting`).

use crate::extract::{Body, Path, Query};
use crate::views;
use crate::views::{Delivery, Release, ReleaseStep};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_store::{BuildTrigger, ReleaseTrigger};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::waiting::Lookup;
use super::{Answer, check};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// At most this many (default 50).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/projects/{project}/releases", tag = "releases",
    params(("project" = String, Path, description = "Project slug"), Paging),
    responses((status = 200, body = [Release])))]
pub async fn list_project_releases(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Release>> {
    principal.require(Permission::Read, Some(&project))?;
    let releases = state
        .store
        .list_releases(&project, None, paging.limit.unwrap_or(50))
        .await?;
    Ok(Json(Lookup::new(&state).views(releases).await))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/releases", tag = "releases",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name"),
           Paging),
    responses((status = 200, body = [Release])))]
pub async fn list_releases(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Release>> {
    principal.require(Permission::Read, Some(&project))?;
    let releases = state
        .store
        .list_releases(&project, Some(&service), paging.limit.unwrap_or(50))
        .await?;
    Ok(Json(Lookup::new(&state).views(releases).await))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequestBody {
    /// The commit to build (40 or 64 hex characters).
    git_sha: String,
    /// Defaults to the service's deploy branch.
    branch: Option<String>,
    /// Deploy the release here when ready; defaults to the service's environment. `null`: build only.
    #[serde(default = "default_deploy")]
    deploy: bool,
}

fn default_deploy() -> bool {
    true
}

#[derive(Serialize, ToSchema)]
pub struct BuildStarted {
    release: Release,
    pipeline: i64,
    /// The commit already had a live release; nothing new was enqueued.
    duplicate: bool,
}

#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/releases", tag = "releases",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name")),
    request_body = BuildRequestBody, responses((status = 202, body = BuildStarted)))]
pub async fn build_release(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<BuildRequestBody>,
) -> Result<(StatusCode, Json<BuildStarted>), ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    let sha_ok = matches!(req.git_sha.len(), 40 | 64) && req.git_sha.bytes().all(|b| b.is_ascii_hexdigit());
    check(
        "git_sha",
        if sha_ok {
            Ok(())
        } else {
            Err("must be a full commit SHA (40 or 64 hex characters)".into())
        },
    )?;
    if let Some(branch) = &req.branch {
        check("branch", enclii_domain::spec::validate_git_ref(branch))?;
    }
    let current = state.store.service(&project, &service).await?;
    let branch = req.branch.or(current.branch.clone()).unwrap_or_else(|| "main".into());
    let trigger = BuildTrigger {
        project,
        service,
        git_sha: req.git_sha.to_ascii_lowercase(),
        branch,
        deploy_to: req.deploy.then(|| current.environment.clone()),
        trigger: ReleaseTrigger::Api,
    };
    let (release, pipeline) = state.store.trigger_build(&principal.subject, &trigger).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BuildStarted {
            release: Lookup::new(&state).view(release).await,
            pipeline: pipeline.id,
            duplicate: pipeline.duplicate,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct PipelineSummary {
    release: Release,
    /// The run's state and steps from the queue; `null` once pruned.
    pipeline: Option<serde_json::Value>,
}

/// Recent build-and-deploy runs of a project: each release with its pipeline's state and steps.
#[utoipa::path(get, path = "/v1/projects/{project}/pipelines", tag = "releases",
    params(("project" = String, Path, description = "Project slug"), Paging),
    responses((status = 200, body = [PipelineSummary])))]
pub async fn list_pipelines(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<PipelineSummary>> {
    principal.require(Permission::Read, Some(&project))?;
    let releases = state
        .store
        .list_releases(&project, None, paging.limit.unwrap_or(20).min(100))
        .await?;
    let mut lookup = Lookup::new(&state);
    let mut runs = Vec::with_capacity(releases.len());
    for release in releases {
        let run = lookup.own_run(&release).await?;
        let waiting = lookup.of_run(&release, run.as_ref()).await?;
        runs.push(PipelineSummary {
            release: views::Release {
                waiting,
                ..release.into()
            },
            pipeline: run.map(|run| json!(run)),
        });
    }
    Ok(Json(runs))
}

/// GitHub deliveries that reached a project, newest first, with what became of each.
#[utoipa::path(get, path = "/v1/projects/{project}/deliveries", tag = "webhooks",
    params(("project" = String, Path, description = "Project slug"), Paging),
    responses((status = 200, body = [Delivery])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Delivery>> {
    principal.require(Permission::Read, Some(&project))?;
    state.store.project(&project).await?;
    Ok(Json(views::all(
        state
            .store
            .list_deliveries(Some(&project), paging.limit.unwrap_or(50))
            .await?,
    )))
}

/// A release with its provenance: the pipeline's steps, their timings, failures and archived logs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseDetail {
    #[serde(flatten)]
    release: Release,
    steps: Vec<ReleaseStep>,
}

#[utoipa::path(get, path = "/v1/releases/{id}", tag = "releases",
    params(("id" = i64, Path, description = "Release id")), responses((status = 200, body = ReleaseDetail)))]
pub async fn get_release(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Answer<ReleaseDetail> {
    let release = state.store.release(id).await?;
    principal.require_on(Permission::Read, &release.project, &format!("release {id}"))?;
    let steps = state.store.release_steps(id).await?;
    Ok(Json(ReleaseDetail {
        release: Lookup::new(&state).view_one(release).await,
        steps: views::all(steps),
    }))
}
