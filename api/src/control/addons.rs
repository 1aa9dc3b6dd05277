//! Add-ons (PostgreSQL, Redis) of a project environment: create, list, show, credentials
//! (audited), rotate, delete. See `enclii_store::Addon` for the states; backups and restores are
//! in `addon_backups`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_deploy_contract::model::AddonKey;
use enclii_domain::addons::{AddonEndpoint, AddonKind, BackupPolicy, connection_value, standard_variables};
use enclii_domain::spec::{parse_memory_bytes, validate_slug};
use enclii_store::{AddonStatus, NewAddon};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path, Query};
use crate::state::AppState;

use super::{Answer, Created, check, field};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddonBody {
    /// A slug, unique in the environment; services on its network reach it at `<name>.internal`.
    name: String,
    /// `postgres` or `redis`.
    kind: String,
    /// A major version Enclii offers (default: the newest it offers).
    version: Option<String>,
    /// Another image with the official image's interface (default `postgres:<version>` or
    /// `redis:<version>`).
    image: Option<String>,
    /// The data volume's size, e.g. `10Gi` (a PVC request on Kubernetes; not enforced on Docker).
    size: Option<String>,
    /// Scheduled backups (none by default; on-demand backups work either way).
    backup: Option<BackupSchedule>,
}

/// An add-on's backup schedule.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupSchedule {
    /// A 5-field cron expression in UTC, e.g. `0 3 * * *`.
    pub schedule: String,
    /// Completed backups to keep (1–366, default 7); older ones are deleted after each backup.
    #[schema(minimum = 1, maximum = 366)]
    pub keep: Option<u32>,
}

impl BackupSchedule {
    /// The policy, or a 422 naming the field.
    pub(super) fn policy(self) -> Result<BackupPolicy, ApiError> {
        let policy = BackupPolicy {
            schedule: self.schedule,
            keep: self.keep.unwrap_or(7),
        };
        policy.validate().map_err(|message| {
            ApiError::invalid(
                message.clone(),
                "give `backup: {schedule: \"0 3 * * *\", keep: 7}` (a 5-field cron in UTC, 1 to 366 kept)",
                vec![field("backup", message)],
            )
        })?;
        Ok(policy)
    }
}

/// An add-on, without its credentials.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Addon {
    pub name: String,
    pub project: String,
    pub environment: String,
    pub kind: String,
    pub version: String,
    pub image: String,
    pub size_mib: Option<i64>,
    /// `provisioning`, `ready` or `failed`.
    pub status: AddonStatus,
    /// Why it failed, or what the last attempt found.
    pub detail: Option<String>,
    /// Bumped by every rotation of its credentials.
    pub generation: i64,
    /// Where its environment's services reach it.
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// The services whose spec reads it (`fromAddon`, `envFrom: addon`).
    pub services: Vec<String>,
    /// Its backup schedule, if any.
    pub backup: Option<BackupSchedule>,
    pub ready_at: Option<i64>,
    pub created_at: i64,
}

/// How to connect: returned only by the credentials call, which is audited.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AddonCredentialsView {
    pub user: String,
    pub password: String,
    pub database: Option<String>,
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// The connection URL a service of the environment uses.
    pub url: String,
    /// The variables `envFrom: [{addon: <name>}]` gives a service, with their values.
    pub variables: std::collections::BTreeMap<String, String>,
    /// The URL from outside the environment's network, where the target publishes one (Docker:
    /// the node's loopback, for `enclii addons connect` on the node).
    pub external_url: Option<String>,
}

/// `?force=true` deletes even while services read it; `?keep_data=true` leaves its volume.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddonRemoval {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    keep_data: bool,
}

/// `?environment=` narrows the project's list to one environment.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddonFilter {
    environment: Option<String>,
}

fn addon_key(row: &enclii_store::Addon) -> AddonKey {
    AddonKey {
        project: row.project.clone(),
        environment: row.environment.clone(),
        name: row.name.clone(),
    }
}

fn endpoint(state: &AppState, row: &enclii_store::Addon, kind: AddonKind) -> AddonEndpoint {
    match &state.runtime {
        Some(target) => target.addon_endpoint(&addon_key(row), kind),
        None => AddonEndpoint::on_network(&row.name, kind),
    }
}

pub(super) async fn view(state: &AppState, row: enclii_store::Addon) -> Result<Addon, ApiError> {
    let kind = row.kind()?;
    let at = endpoint(state, &row, kind);
    let services = state
        .store
        .addon_readers(&row.project, &row.environment, &row.name)
        .await?;
    let backup = row.backup_schedule.clone().map(|schedule| BackupSchedule {
        schedule,
        keep: row.backup_keep.and_then(|k| u32::try_from(k).ok()),
    });
    Ok(Addon {
        backup,
        host: at.host,
        port: at.port,
        services,
        name: row.name,
        project: row.project,
        environment: row.environment,
        kind: row.kind,
        version: row.version,
        image: row.image,
        size_mib: row.size_mib,
        status: row.status,
        detail: row.detail,
        generation: row.generation,
        ready_at: row.ready_at,
        created_at: row.created_at,
    })
}

/// Checks the body: every failing field is named.
fn new_addon(project: String, environment: String, req: AddonBody) -> Result<NewAddon, ApiError> {
    check("name", validate_slug(&req.name))?;
    let kind = AddonKind::parse(&req.kind).map_err(|message| {
        ApiError::invalid(
            format!("kind: {message}"),
            "give `kind: postgres` or `kind: redis`",
            vec![field("kind", message)],
        )
    })?;
    let version = req.version.unwrap_or_else(|| kind.default_version().to_string());
    check("version", kind.check_version(&version))?;
    let image = req.image.unwrap_or_else(|| kind.default_image(&version));
    check("image", enclii_domain::image::validate_reference(&image))?;
    let size_mib = match req.size {
        None => None,
        Some(size) => {
            let bytes = parse_memory_bytes(&size).map_err(|message| {
                ApiError::invalid(
                    format!("size: {message}"),
                    "give a size such as `1Gi` or `512Mi`",
                    vec![field("size", message)],
                )
            })?;
            Some(i64::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(i64::MAX))
        }
    };
    let backup = req.backup.map(BackupSchedule::policy).transpose()?;
    Ok(NewAddon {
        project,
        environment,
        name: req.name,
        kind,
        version,
        image,
        size_mib,
        backup,
        seed_backup: None,
    })
}

#[utoipa::path(post, path = "/v1/projects/{project}/environments/{environment}/addons", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name")),
    request_body = AddonBody,
    responses((status = 201, body = Addon, description = "provisioning; `ready` once it accepts its login"),
              (status = 409, body = crate::Problem, description = "an add-on of that name exists in the environment")))]
pub async fn create_addon(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment)): Path<(String, String)>,
    Body(req): Body<AddonBody>,
) -> Created<Addon> {
    principal.require(Permission::Deploy, Some(&project))?;
    let new = new_addon(project, environment, req)?;
    let row = state.store.create_addon(&principal.subject, &new).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row).await?)))
}

#[utoipa::path(get, path = "/v1/projects/{project}/addons", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), AddonFilter),
    responses((status = 200, body = [Addon])))]
pub async fn list_addons(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(filter): Query<AddonFilter>,
) -> Answer<Vec<Addon>> {
    principal.require(Permission::Read, Some(&project))?;
    let rows = state.store.list_addons(&project, filter.environment.as_deref()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(view(&state, row).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    responses((status = 200, body = Addon)))]
pub async fn get_addon(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Answer<Addon> {
    principal.require(Permission::Read, Some(&project))?;
    let row = state.store.addon(&project, &environment, &name).await?;
    Ok(Json(view(&state, row).await?))
}

#[utoipa::path(get, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}/credentials", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    responses((status = 200, body = AddonCredentialsView, description = "the current login; the read is audited")))]
pub async fn addon_credentials(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Answer<AddonCredentialsView> {
    principal.require(Permission::ServiceSecrets, Some(&project))?;
    let access = state
        .store
        .reveal_addon_credentials(&principal.subject, &project, &environment, &name)
        .await?;
    let at = endpoint(&state, &access.addon, access.kind);
    let value = |key: &str| connection_value(access.kind, &at, &access.credentials, key).unwrap_or_default();
    let variables = standard_variables(access.kind)
        .iter()
        .map(|(variable, key)| (variable.to_string(), value(key)))
        .collect();
    let published = match &state.runtime {
        Some(target) => target.addon_published(&addon_key(&access.addon)).await?,
        None => None,
    };
    let external_url = published.and_then(|addr| {
        let outside = AddonEndpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        connection_value(access.kind, &outside, &access.credentials, "url")
    });
    Ok(Json(AddonCredentialsView {
        url: value("url"),
        user: access.credentials.user.clone(),
        password: access.credentials.password.clone(),
        database: access.credentials.database.clone(),
        host: at.host,
        port: at.port,
        variables,
        external_url,
    }))
}

#[utoipa::path(post, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}/rotate", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    responses((status = 202, body = Addon, description = "provisioning the new login; its services roll once it is ready"),
              (status = 409, body = crate::Problem, description = "still provisioning")))]
pub async fn rotate_addon(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Addon>), ApiError> {
    principal.require(Permission::ServiceSecrets, Some(&project))?;
    let row = state
        .store
        .rotate_addon(&principal.subject, &project, &environment, &name)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, row).await?)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name"), AddonRemoval),
    responses((status = 204),
              (status = 409, body = crate::Problem, description = "services still read it (named); `?force=true` deletes anyway")))]
pub async fn delete_addon(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
    Query(removal): Query<AddonRemoval>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    state
        .store
        .delete_addon(
            &principal.subject,
            &project,
            &environment,
            &name,
            removal.force,
            removal.keep_data,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
