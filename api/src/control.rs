//! The control plane's REST resources: projects, environments, services (from Service Specs),
//! releases, deployments, rollback, secrets, routes, members, tokens and the audit trail. Each
//! handler authorises the caller for one permission on one project, validates, and makes one
//! store call (one transaction, audited).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use enclii_domain::pipeline::repository_key;
use enclii_domain::spec::{ServiceSpec, SpecFormat, validate_environment_name, validate_hostname, validate_slug};
use enclii_store::{
    AuditEvent, AuditFilter, BuildTrigger, Delivery, Deployment, DeploymentRequest, Environment, EnvironmentChange,
    NewRoute, Project, Release, ReleaseStep, RoleBinding, Route, SecretMeta, SecretScope, Service, ServiceDraft,
    SpecVersion, TokenRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal, Role};
use crate::error::{ApiError, FieldError};
use crate::routes::{AppState, Body, RawBody};

type Answer<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;

fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn check(path: &str, result: Result<(), String>) -> Result<(), ApiError> {
    result.map_err(|message| {
        ApiError::invalid(
            format!("{path}: {message}"),
            "fix the named field and send again",
            vec![field(path, message)],
        )
    })
}

// --- projects -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Lowercase DNS label: `a-z`, `0-9`, `-`; starts with a letter.
    slug: String,
    /// Display name (defaults to the slug).
    name: Option<String>,
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 409, description = "slug taken")))]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    Body(req): Body<NewProject>,
) -> Created<Project> {
    principal.require(Permission::ProjectWrite, None)?;
    check("slug", validate_slug(&req.slug))?;
    let name = req.name.unwrap_or_else(|| req.slug.clone());
    let project = state.store.create_project(&principal.subject, &req.slug, &name).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", responses((status = 200, body = [Project])))]
pub async fn list_projects(State(state): State<AppState>, principal: Principal) -> Answer<Vec<Project>> {
    let projects = state.store.list_projects().await?;
    Ok(Json(projects.into_iter().filter(|p| principal.sees(&p.slug)).collect()))
}

#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects", responses((status = 200, body = Project)))]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Project> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.project(&project).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    name: String,
}

#[utoipa::path(patch, path = "/v1/projects/{project}", tag = "projects", request_body = ProjectChange,
    responses((status = 200, body = Project)))]
pub async fn update_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<ProjectChange>,
) -> Answer<Project> {
    principal.require(Permission::ProjectWrite, Some(&project))?;
    Ok(Json(
        state
            .store
            .rename_project(&principal.subject, &project, &req.name)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects", responses((status = 204)))]
pub async fn delete_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ProjectDelete, Some(&project))?;
    state.store.delete_project(&principal.subject, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- environments -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnvironment {
    /// `dev`, `stage`, `prod` or `preview-<n>`.
    name: String,
    region: Option<String>,
    /// Monthly budget in cents.
    budget_cents: Option<i64>,
    quota: Option<QuotaBody>,
}

/// The most one service of the environment may ask for (every replica at `replicas.max`, every
/// volume); a deploy over it is refused before anything is applied. On Kubernetes a
/// `ResourceQuota` also caps the namespace's total. An omitted field is unlimited.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// CPU, a Kubernetes quantity: `4` or `500m`.
    cpu: Option<String>,
    /// Memory, e.g. `8Gi`.
    memory: Option<String>,
    /// Volume storage, e.g. `100Gi`.
    storage: Option<String>,
    /// Replicas.
    pods: Option<i64>,
}

/// The quota as the store keeps it (millicores, MiB), or the field that does not parse.
fn quota_settings(quota: &QuotaBody, settings: &mut EnvironmentChange) -> Result<(), ApiError> {
    let parsed = |path: &str, value: &Option<String>, parse: fn(&str) -> Result<u64, String>, unit: u64| {
        value
            .as_deref()
            .map(|v| parse(v).map(|n| (n / unit) as i64))
            .transpose()
            .map_err(|message| (path.to_string(), message))
    };
    let result = (|| {
        settings.quota_cpu_millis = parsed("quota.cpu", &quota.cpu, enclii_domain::spec::parse_cpu_millis, 1)?;
        settings.quota_memory_mib = parsed(
            "quota.memory",
            &quota.memory,
            enclii_domain::spec::parse_memory_bytes,
            1 << 20,
        )?;
        settings.quota_storage_mib = parsed(
            "quota.storage",
            &quota.storage,
            enclii_domain::spec::parse_memory_bytes,
            1 << 20,
        )?;
        if let Some(pods) = quota.pods
            && pods < 1
        {
            return Err(("quota.pods".to_string(), format!("must be ≥ 1 (got {pods})")));
        }
        settings.quota_pods = quota.pods;
        Ok(())
    })();
    result.map_err(|(path, message)| check(&path, Err(message)).unwrap_err())
}

fn check_budget(budget: Option<i64>) -> Result<(), ApiError> {
    check(
        "budget_cents",
        match budget {
            Some(b) if b < 0 => Err(format!("must be ≥ 0 (got {b})")),
            _ => Ok(()),
        },
    )
}

#[utoipa::path(post, path = "/v1/projects/{project}/environments", tag = "environments",
    request_body = NewEnvironment, responses((status = 201, body = Environment)))]
pub async fn create_environment(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<NewEnvironment>,
) -> Created<Environment> {
    principal.require(Permission::ProjectWrite, Some(&project))?;
    if req.budget_cents.is_some() || req.quota.is_some() {
        principal.require(Permission::Govern, Some(&project))?;
    }
    check("name", validate_environment_name(&req.name))?;
    check_budget(req.budget_cents)?;
    let mut settings = EnvironmentChange {
        region: req.region,
        budget_cents: req.budget_cents,
        ..EnvironmentChange::default()
    };
    quota_settings(&req.quota.unwrap_or_default(), &mut settings)?;
    let env = state
        .store
        .create_environment(&principal.subject, &project, &req.name, &settings)
        .await?;
    Ok((StatusCode::CREATED, Json(env)))
}

#[utoipa::path(get, path = "/v1/projects/{project}/environments", tag = "environments",
    responses((status = 200, body = [Environment])))]
pub async fn list_environments(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<Environment>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.list_environments(&project).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentUpdate {
    region: Option<String>,
    budget_cents: Option<i64>,
    /// Replaces the quota when given; kept as it is when omitted.
    quota: Option<QuotaBody>,
}

#[utoipa::path(patch, path = "/v1/projects/{project}/environments/{environment}", tag = "environments",
    request_body = EnvironmentUpdate, responses((status = 200, body = Environment)))]
pub async fn update_environment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment)): Path<(String, String)>,
    Body(req): Body<EnvironmentUpdate>,
) -> Answer<Environment> {
    // Budgets are governance; the region is project configuration.
    principal.require(Permission::Govern, Some(&project))?;
    check_budget(req.budget_cents)?;
    let mut settings = EnvironmentChange {
        region: req.region,
        budget_cents: req.budget_cents,
        ..EnvironmentChange::default()
    };
    match &req.quota {
        Some(quota) => quota_settings(quota, &mut settings)?,
        None => {
            let current = state.store.environment(&project, &environment).await?;
            settings.quota_cpu_millis = current.quota_cpu_millis;
            settings.quota_memory_mib = current.quota_memory_mib;
            settings.quota_storage_mib = current.quota_storage_mib;
            settings.quota_pods = current.quota_pods;
        }
    }
    Ok(Json(
        state
            .store
            .update_environment(&principal.subject, &project, &environment, &settings)
            .await?,
    ))
}

// --- services -----------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ServiceView {
    #[serde(flatten)]
    service: Service,
    /// The current Service Spec, canonical JSON.
    spec: serde_json::Value,
}

impl From<Service> for ServiceView {
    fn from(service: Service) -> Self {
        ServiceView {
            spec: service.spec_json(),
            service,
        }
    }
}

/// Parses a Service Spec body (YAML or JSON by Content-Type, sniffed otherwise) into a draft.
fn parse_spec(headers: &HeaderMap, body: &[u8]) -> Result<(ServiceSpec, ServiceDraft), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_encoding",
            format!("the spec is not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            "send the Service Spec as UTF-8 YAML or JSON",
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if content_type.contains("json") {
        ServiceSpec::parse(text, SpecFormat::Json)
    } else if content_type.contains("yaml") {
        ServiceSpec::parse(text, SpecFormat::Yaml)
    } else {
        ServiceSpec::parse_any(text)
    };
    let spec = parsed.map_err(|errors| {
        let fields: Vec<FieldError> = errors.iter().map(|e| field(&e.path, e.message.clone())).collect();
        ApiError::invalid(
            errors.to_string(),
            "fix the named fields of the Service Spec and send it again",
            fields,
        )
    })?;
    let git = spec.spec.source.as_ref().map(|s| &s.git);
    let draft = ServiceDraft {
        project: spec.metadata.project.clone(),
        name: spec.metadata.name.clone(),
        environment: spec.metadata.environment.clone(),
        repository: git.map(|g| repository_key(&g.repository)),
        branch: git.map(|g| g.branch.clone()),
        spec: serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    Ok((spec, draft))
}

async fn apply(
    state: &AppState,
    principal: &Principal,
    project: &str,
    name: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(bool, ServiceView), ApiError> {
    principal.require(Permission::Deploy, Some(project))?;
    let (spec, draft) = parse_spec(headers, body)?;
    if draft.project != project {
        return Err(ApiError::invalid(
            format!(
                "metadata.project: the spec is for project `{}`, but was sent to `{project}`",
                draft.project
            ),
            "send it to the project it names, or change metadata.project",
            vec![field("metadata.project", format!("must be `{project}`"))],
        ));
    }
    if let Some(name) = name
        && draft.name != name
    {
        return Err(ApiError::invalid(
            format!(
                "metadata.name: the spec is for service `{}`, but was sent to `{name}`",
                draft.name
            ),
            "send it to the service it names, or change metadata.name",
            vec![field("metadata.name", format!("must be `{name}`"))],
        ));
    }
    if !spec.spec.routes.is_empty() {
        principal.require(Permission::Routes, Some(project))?;
    }
    let routes: Vec<(String, String)> = spec
        .spec
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path.clone()))
        .collect();
    let (service, created) = state.store.apply_service(&principal.subject, &draft, &routes).await?;
    Ok((created, service.into()))
}

#[utoipa::path(post, path = "/v1/projects/{project}/services", tag = "services",
    request_body(content = String, description = "A Service Spec", content_type = "application/yaml"),
    responses((status = 201, body = ServiceView), (status = 422, body = crate::Problem)))]
pub async fn create_service(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let (created, view) = apply(&state, &principal, &project, None, &headers, &body).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

#[utoipa::path(put, path = "/v1/projects/{project}/services/{service}", tag = "services",
    request_body(content = String, description = "A Service Spec", content_type = "application/yaml"),
    responses((status = 200, body = ServiceView), (status = 201, body = ServiceView), (status = 422, body = crate::Problem)))]
pub async fn put_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let (created, view) = apply(&state, &principal, &project, Some(&name), &headers, &body).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services", tag = "services",
    responses((status = 200, body = [ServiceView])))]
pub async fn list_services(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<ServiceView>> {
    principal.require(Permission::Read, Some(&project))?;
    let services = state.store.list_services(&project).await?;
    Ok(Json(services.into_iter().map(ServiceView::from).collect()))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}", tag = "services",
    responses((status = 200, body = ServiceView)))]
pub async fn get_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> Answer<ServiceView> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.service(&project, &name).await?.into()))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/services/{service}", tag = "services",
    responses((status = 204)))]
pub async fn delete_service(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ProjectWrite, Some(&project))?;
    state.store.delete_service(&principal.subject, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct SpecVersionView {
    #[serde(flatten)]
    version: SpecVersion,
    spec: serde_json::Value,
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/specs", tag = "services",
    responses((status = 200, body = [SpecVersionView])))]
pub async fn spec_versions(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> Answer<Vec<SpecVersionView>> {
    principal.require(Permission::Read, Some(&project))?;
    let versions = state.store.spec_versions(&project, &name).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|version| SpecVersionView {
                spec: version.spec_json(),
                version,
            })
            .collect(),
    ))
}

// --- releases, deployments, rollback ------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
pub struct Paging {
    /// At most this many (default 50).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/projects/{project}/releases", tag = "releases", params(Paging),
    responses((status = 200, body = [Release])))]
pub async fn list_project_releases(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Release>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(
        state
            .store
            .list_releases(&project, None, paging.limit.unwrap_or(50))
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/releases", tag = "releases", params(Paging),
    responses((status = 200, body = [Release])))]
pub async fn list_releases(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Release>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(
        state
            .store
            .list_releases(&project, Some(&service), paging.limit.unwrap_or(50))
            .await?,
    ))
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
        trigger: "api".into(),
    };
    let (release, pipeline) = state.store.trigger_build(&principal.subject, &trigger).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BuildStarted {
            release,
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
#[utoipa::path(get, path = "/v1/projects/{project}/pipelines", tag = "releases", params(Paging),
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
    let mut runs = Vec::with_capacity(releases.len());
    for release in releases {
        let pipeline = match release.pipeline_id {
            Some(id) => state.backend.pipeline(id).await?.map(|p| json!(p)),
            None => None,
        };
        runs.push(PipelineSummary { release, pipeline });
    }
    Ok(Json(runs))
}

/// GitHub deliveries that reached a project, newest first, with what became of each.
#[utoipa::path(get, path = "/v1/projects/{project}/deliveries", tag = "webhooks", params(Paging),
    responses((status = 200, body = [Delivery])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(paging): Query<Paging>,
) -> Answer<Vec<Delivery>> {
    principal.require(Permission::Read, Some(&project))?;
    state.store.project(&project).await?;
    Ok(Json(
        state
            .store
            .list_deliveries(Some(&project), paging.limit.unwrap_or(50))
            .await?,
    ))
}

/// A release with its provenance: the pipeline's steps, their timings, failures and archived logs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseDetail {
    #[serde(flatten)]
    release: Release,
    steps: Vec<ReleaseStep>,
}

#[utoipa::path(get, path = "/v1/releases/{id}", tag = "releases", responses((status = 200, body = ReleaseDetail)))]
pub async fn get_release(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Answer<ReleaseDetail> {
    let release = state.store.release(id).await?;
    principal.require_on(Permission::Read, &release.project, &format!("release {id}"))?;
    let steps = state.store.release_steps(id).await?;
    Ok(Json(ReleaseDetail { release, steps }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequestBody {
    release: i64,
    /// Defaults to the service's environment.
    environment: Option<String>,
    /// `rolling` or `canary`; defaults to the spec's strategy.
    strategy: Option<String>,
}

async fn deploy(
    state: &AppState,
    principal: &Principal,
    project: String,
    service: String,
    req: DeployRequestBody,
    reason: &str,
) -> Created<Deployment> {
    principal.require(Permission::Deploy, Some(&project))?;
    let current = state.store.service(&project, &service).await?;
    let strategy = match req.strategy {
        Some(s) => s,
        None => current
            .spec_json()
            .pointer("/spec/deploy/strategy")
            .and_then(|v| v.as_str())
            .unwrap_or("rolling")
            .to_string(),
    };
    check(
        "strategy",
        if matches!(strategy.as_str(), "rolling" | "canary") {
            Ok(())
        } else {
            Err(format!("must be `rolling` or `canary` (got `{strategy}`)"))
        },
    )?;
    if let Some(policy) = &state.signatures {
        let release = state.store.release(req.release).await?;
        // Ready and signed are the store's checks; this one asks the registry.
        if release.project == project && release.signature.is_some() {
            policy
                .check(&release)
                .await
                .map_err(|why| ApiError::Conflict(format!("release {} cannot deploy: {why}", release.id)))?;
        }
    }
    let request = DeploymentRequest {
        environment: req.environment.unwrap_or(current.environment),
        project,
        service,
        release_id: req.release,
        strategy,
        reason: reason.into(),
    };
    let deployment = state.store.create_deployment(&principal.subject, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/deployments", tag = "deployments",
    request_body = DeployRequestBody, responses((status = 202, body = Deployment), (status = 409, body = crate::Problem)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<DeployRequestBody>,
) -> Created<Deployment> {
    deploy(&state, &principal, project, service, req, "deploy").await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The earlier ready release to return to.
    to: i64,
    environment: Option<String>,
}

#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/rollback", tag = "deployments",
    request_body = RollbackBody, responses((status = 202, body = Deployment)))]
pub async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<RollbackBody>,
) -> Created<Deployment> {
    let body = DeployRequestBody {
        release: req.to,
        environment: req.environment,
        strategy: Some("rolling".into()),
    };
    deploy(&state, &principal, project, service, body, "rollback").await
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeploymentQuery {
    service: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/projects/{project}/deployments", tag = "deployments", params(DeploymentQuery),
    responses((status = 200, body = [Deployment])))]
pub async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(query): Query<DeploymentQuery>,
) -> Answer<Vec<Deployment>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(
        state
            .store
            .list_deployments(&project, query.service.as_deref(), query.limit.unwrap_or(50))
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments", responses((status = 200, body = Deployment)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Answer<Deployment> {
    let deployment = state.store.deployment(id).await?;
    principal.require_on(Permission::Read, &deployment.project, &format!("deployment {id}"))?;
    Ok(Json(deployment))
}

// --- secrets ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
pub struct SecretPlace {
    environment: Option<String>,
    service: Option<String>,
}

impl SecretPlace {
    fn scope(self, project: &str) -> SecretScope {
        SecretScope {
            project: project.to_string(),
            environment: self.environment,
            service: self.service,
        }
    }
}

/// Service-scoped secrets need `secrets.service`; project- and environment-wide ones `secrets.project`.
fn secret_permission(scope: &SecretScope) -> Permission {
    if scope.service.is_some() {
        Permission::ServiceSecrets
    } else {
        Permission::ProjectSecrets
    }
}

fn check_secret_name(name: &str) -> Result<(), ApiError> {
    check("name", enclii_domain::spec::validate_env_name(name))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value; sealed at rest, never returned.
    value: String,
    environment: Option<String>,
    service: Option<String>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

#[utoipa::path(put, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets", request_body = SecretValue,
    responses((status = 200, body = SecretMeta)))]
pub async fn set_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Body(req): Body<SecretValue>,
) -> Answer<SecretMeta> {
    let scope = SecretPlace {
        environment: req.environment,
        service: req.service,
    }
    .scope(&project);
    principal.require(secret_permission(&scope), Some(&project))?;
    check_secret_name(&name)?;
    if req.value.len() > 64 * 1024 {
        return Err(ApiError::invalid(
            "value: longer than 64 KiB",
            "store large data elsewhere and keep a reference in the secret",
            vec![field("value", "must be at most 65536 bytes")],
        ));
    }
    Ok(Json(
        state
            .store
            .set_secret(&principal.subject, &scope, &name, req.value.as_bytes())
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/secrets", tag = "secrets", params(SecretPlace),
    responses((status = 200, body = [SecretMeta], description = "names and versions; never values")))]
pub async fn list_secrets(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(place): Query<SecretPlace>,
) -> Answer<Vec<SecretMeta>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(
        state
            .store
            .list_secrets(&project, place.environment.as_deref(), place.service.as_deref())
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets", params(SecretPlace),
    responses((status = 204)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(place): Query<SecretPlace>,
) -> Result<StatusCode, ApiError> {
    let scope = place.scope(&project);
    principal.require(secret_permission(&scope), Some(&project))?;
    state.store.delete_secret(&principal.subject, &scope, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- routes -------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    service: String,
    /// Defaults to the service's environment.
    environment: Option<String>,
    host: String,
    #[serde(default = "root_path")]
    path: String,
    #[serde(default = "default_tls")]
    tls: bool,
}

fn root_path() -> String {
    "/".into()
}

fn default_tls() -> bool {
    true
}

#[utoipa::path(post, path = "/v1/projects/{project}/routes", tag = "routes", request_body = RouteBody,
    responses((status = 201, body = Route), (status = 409, body = crate::Problem, description = "host and path taken")))]
pub async fn add_route(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Body(req): Body<RouteBody>,
) -> Created<Route> {
    principal.require(Permission::Routes, Some(&project))?;
    check("host", validate_hostname(&req.host))?;
    check(
        "path",
        if req.path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("must start with `/` (got `{}`)", req.path))
        },
    )?;
    let environment = match req.environment {
        Some(env) => env,
        None => state.store.service(&project, &req.service).await?.environment,
    };
    let route = NewRoute {
        project,
        environment,
        service: req.service,
        host: req.host.to_ascii_lowercase(),
        path: req.path,
        tls: req.tls,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.add_route(&principal.subject, &route).await?),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/routes", tag = "routes", responses((status = 200, body = [Route])))]
pub async fn list_routes(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<Route>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(state.store.list_routes(&project).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/routes/{id}", tag = "routes", responses((status = 204)))]
pub async fn delete_route(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Routes, Some(&project))?;
    state.store.delete_route(&principal.subject, &project, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- members (roles) ----------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/projects/{project}/members", tag = "members",
    responses((status = 200, body = [RoleBinding])))]
pub async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<RoleBinding>> {
    principal.require(Permission::Read, Some(&project))?;
    state.store.project(&project).await?;
    Ok(Json(state.store.role_bindings(&project).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    role: Role,
}

/// Grants `subject` a role on a project (`*` for every project). Nobody grants above their own role.
#[utoipa::path(put, path = "/v1/projects/{project}/members/{subject}", tag = "members", request_body = MemberBody,
    responses((status = 200, body = RoleBinding)))]
pub async fn put_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, subject)): Path<(String, String)>,
    Body(req): Body<MemberBody>,
) -> Answer<RoleBinding> {
    let scope = (project != "*").then_some(project.as_str());
    let own = principal.require(Permission::Govern, scope)?;
    if req.role > own {
        return Err(ApiError::forbidden(
            format!("you are {} and cannot grant {}", own.as_str(), req.role.as_str()),
            "ask an Owner to grant it",
        ));
    }
    check_outranks(&state, own, &subject, &project).await?;
    Ok(Json(
        state
            .store
            .bind_role(&principal.subject, &subject, &project, req.role.as_str())
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/members/{subject}", tag = "members", responses((status = 204)))]
pub async fn delete_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, subject)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = (project != "*").then_some(project.as_str());
    let own = principal.require(Permission::Govern, scope)?;
    check_outranks(&state, own, &subject, &project).await?;
    state.store.unbind_role(&principal.subject, &subject, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Nobody changes or removes the binding of someone ranked above them (an Admin cannot demote an Owner).
async fn check_outranks(state: &AppState, own: Role, subject: &str, project: &str) -> Result<(), ApiError> {
    let current = state.store.roles_of(subject).await?;
    if let Some(theirs) = current
        .iter()
        .filter(|b| b.project == project)
        .filter_map(|b| Role::parse(&b.role))
        .max()
        && theirs > own
    {
        return Err(ApiError::forbidden(
            format!(
                "`{subject}` is {} on `{project}`; you are {}",
                theirs.as_str(),
                own.as_str()
            ),
            "ask an Owner to change it",
        ));
    }
    Ok(())
}

// --- tokens and identity ------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    subject: String,
    roles: Vec<RoleBinding>,
    /// The token's scopes (`null` for OIDC sessions: everything the roles allow).
    scopes: Option<Vec<String>>,
    project: Option<String>,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "tokens", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(principal: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        scopes: principal
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|p| p.scope().to_string()).collect()),
        subject: principal.subject,
        roles: principal.bindings,
        project: principal.project,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    name: String,
    /// Permission scopes: `read`, `deploy`, `secrets.service`, `secrets.project`, `routes`,
    /// `project.write`, `govern`, `project.delete`. Default: `read`.
    #[serde(default)]
    scopes: Vec<String>,
    /// Restrict the token to one project.
    project: Option<String>,
    /// Days until it expires (default 90, at most 365).
    expires_in_days: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token. It is shown only this once; store it safely.
    token: String,
    #[serde(flatten)]
    record: TokenView,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    #[serde(flatten)]
    record: TokenRecord,
    scopes: Vec<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(record: TokenRecord) -> Self {
        TokenView {
            scopes: record.scope_list(),
            record,
        }
    }
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewTokenBody,
    responses((status = 201, body = CreatedToken)))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    Body(req): Body<NewTokenBody>,
) -> Created<CreatedToken> {
    let scopes = if req.scopes.is_empty() {
        vec!["read".to_string()]
    } else {
        req.scopes
    };
    let mut errors = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        match Permission::from_scope(scope) {
            None => errors.push(field(
                &format!("scopes[{i}]"),
                format!(
                    "unknown scope `{scope}`; known: {}",
                    crate::auth::Permission::ALL.map(|p| p.scope()).join(", ")
                ),
            )),
            // A token never carries more than its holder: each scope must be held somewhere.
            Some(p) => {
                let held = match req.project.as_deref() {
                    Some(project) => principal.require(p, Some(project)).is_ok(),
                    None => principal.holds_anywhere(p),
                };
                if !held {
                    errors.push(field(
                        &format!("scopes[{i}]"),
                        format!("you do not hold `{scope}` yourself"),
                    ));
                }
            }
        }
    }
    let days = req.expires_in_days.unwrap_or(90);
    if days == 0 || days > 365 {
        errors.push(field("expires_in_days", format!("must be 1–365 (got {days})")));
    }
    if !errors.is_empty() {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::invalid(detail, "fix the named fields and send again", errors));
    }
    if let Some(only) = &principal.project
        && req.project.as_ref() != Some(only)
    {
        return Err(ApiError::forbidden(
            format!("this token is restricted to project `{only}`; a token it creates must be too"),
            format!("add \"project\": \"{only}\""),
        ));
    }
    let token = enclii_auth::token::generate();
    let now = chrono::Utc::now().timestamp_millis();
    // A token never outlives the token that created it.
    let expires_at = match principal.expires_at {
        Some(parent) => parent.min(now + i64::from(days) * 86_400_000),
        None => now + i64::from(days) * 86_400_000,
    };
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash.clone(),
        subject: principal.subject.clone(),
        name: req.name,
        scopes: json!(scopes).to_string(),
        project: req.project,
        created_at: now,
        expires_at: Some(expires_at),
        revoked_at: None,
    };
    state.store.insert_token(&principal.subject, &record).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: token.plaintext,
            record: record.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = [TokenView])))]
pub async fn list_tokens(State(state): State<AppState>, principal: Principal) -> Answer<Vec<TokenView>> {
    let tokens = state.store.list_tokens(&principal.subject).await?;
    Ok(Json(tokens.into_iter().map(TokenView::from).collect()))
}

/// Revokes one of your tokens (Admins and Owners of the platform may revoke anyone's).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", responses((status = 204)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token = state
        .store
        .token(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("token `{id}` does not exist")))?;
    if token.subject != principal.subject {
        principal.require(Permission::Govern, None)?;
    }
    state.store.revoke_token(&principal.subject, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- audit --------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    #[serde(flatten)]
    event: AuditEvent,
    diff: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    project: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    entity_type: Option<String>,
    /// Epoch milliseconds.
    since: Option<i64>,
    /// Page backwards: events with a smaller id.
    before: Option<i64>,
    limit: Option<i64>,
}

/// The audit trail, newest first. Without `project` it spans the platform (platform-wide readers only).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = [AuditView])))]
pub async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<AuditQuery>,
) -> Answer<Vec<AuditView>> {
    principal.require(Permission::Read, q.project.as_deref())?;
    if q.project.is_none() && principal.project.is_some() {
        return Err(ApiError::forbidden(
            "this token is restricted to one project",
            "add ?project=<slug> to the query",
        ));
    }
    let filter = AuditFilter {
        project: q.project,
        actor: q.actor,
        action: q.action,
        entity_type: q.entity_type,
        since: q.since,
        before: q.before,
        limit: q.limit,
    };
    let events = state.store.list_audit(&filter).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|event| AuditView {
                diff: event.diff_json(),
                event,
            })
            .collect(),
    ))
}
