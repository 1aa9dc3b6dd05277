//! Environments of a project, with budgets and quotas (quota bodies parsed to millicores and MiB);
//! deleting one tears down what was deployed there.

use crate::extract::{Body, Path, Query};
use crate::views;
use crate::views::Environment;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_domain::spec::{validate_environment_name, validate_word};
use enclii_store::EnvironmentChange;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;

use super::{Answer, Created, check};

/// A region is a provider's word for a place (`us-east-1`, `fra1`): 1–63 characters, no spaces.
fn check_region(region: Option<&str>) -> Result<(), ApiError> {
    region.map_or(Ok(()), |r| check("region", validate_word(r, 63)))
}

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
    params(("project" = String, Path, description = "Project slug")),
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
    check_region(req.region.as_deref())?;
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
    Ok((StatusCode::CREATED, Json(env.into())))
}

#[utoipa::path(get, path = "/v1/projects/{project}/environments", tag = "environments",
    params(("project" = String, Path, description = "Project slug")),
    responses((status = 200, body = [Environment])))]
pub async fn list_environments(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> Answer<Vec<Environment>> {
    principal.require(Permission::Read, Some(&project))?;
    Ok(Json(views::all(state.store.list_environments(&project).await?)))
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
    params(("project" = String, Path, description = "Project slug"),
           ("environment" = String, Path, description = "Environment name")),
    request_body = EnvironmentUpdate, responses((status = 200, body = Environment)))]
pub async fn update_environment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment)): Path<(String, String)>,
    Body(req): Body<EnvironmentUpdate>,
) -> Answer<Environment> {
    // Budgets are governance; the region is project configuration.
    principal.require(Permission::Govern, Some(&project))?;
    check_region(req.region.as_deref())?;
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
            .await?
            .into(),
    ))
}

/// Deletes an environment. Refused (409, naming them) while services are at home in it
/// (`metadata.environment`): delete or move them first. Otherwise its queued and running work is
/// cancelled, its rows go at once — routes, secrets of every scope within it; its deployments end
/// `torn_down` —, and `teardown` jobs remove what each service deployed there runs on the target,
/// volumes too unless `keep_volumes`. An environment created again under the name starts empty.
#[utoipa::path(delete, path = "/v1/projects/{project}/environments/{environment}", tag = "environments",
    params(("project" = String, Path, description = "Project slug"),
           ("environment" = String, Path, description = "Environment name"),
           super::Keep),
    responses((status = 202, body = crate::views::Deletion),
              (status = 409, body = crate::Problem, description = "services are at home in the environment")))]
pub async fn delete_environment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment)): Path<(String, String)>,
    Query(keep): Query<super::Keep>,
) -> Result<(StatusCode, Json<crate::views::Deletion>), ApiError> {
    // As deleting a service: project configuration, an Admin's (not a Developer's).
    principal.require(Permission::ProjectWrite, Some(&project))?;
    let deletion = state
        .store
        .delete_environment(&principal.subject, &project, &environment, keep.keep_volumes)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(deletion.into())))
}
