//! Backups of add-ons: take one now, list them, restore one, set the schedule. The dump itself
//! runs in an `addon-backup` job (see `enclii_deploy`'s `addon_backups`); these calls record
//! the request and answer at once.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use enclii_store::{AddonBackupRecord, BackupStatus, BackupTrigger};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Answer;
use super::addons::{Addon, BackupSchedule, view};
use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::extract::{Body, Path};
use crate::state::AppState;

/// One backup of an add-on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AddonBackup {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub addon: String,
    /// `postgres` (a `pg_dump -Fc` archive) or `redis` (an RDB snapshot).
    pub kind: String,
    /// `manual`, `scheduled` or `final`.
    pub trigger: BackupTrigger,
    /// `running`, `completed` (restorable) or `failed` (see `detail`).
    pub status: BackupStatus,
    /// Where the sealed artefact is kept in the artefact store.
    pub artefact_key: String,
    /// Size of the stored (encrypted) artefact.
    pub size_bytes: Option<i64>,
    /// Size of the dump before encryption.
    pub plain_bytes: Option<i64>,
    /// SHA-256 of the stored artefact, checked before every restore.
    pub sha256: Option<String>,
    pub detail: Option<String>,
    pub requested_by: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

impl From<AddonBackupRecord> for AddonBackup {
    fn from(r: AddonBackupRecord) -> Self {
        AddonBackup {
            id: r.id,
            project: r.project,
            environment: r.environment,
            addon: r.addon,
            kind: r.kind,
            trigger: r.trigger,
            status: r.status,
            artefact_key: r.artefact_key,
            size_bytes: r.size_bytes,
            plain_bytes: r.plain_bytes,
            sha256: r.sha256,
            detail: r.detail,
            requested_by: r.requested_by,
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The id of a completed backup of this add-on.
    pub backup: i64,
    /// Restore into another add-on of the environment (same kind) instead of this one.
    pub into: Option<String>,
}

/// A restore under way.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RestoreAccepted {
    /// The `addon-restore` job: `GET /v1/jobs/{job}` says when it is done.
    pub job: i64,
    pub backup: i64,
    /// The add-on restored into.
    pub addon: String,
    pub environment: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddonChange {
    /// The new backup schedule; `null` removes it.
    pub backup: Option<BackupSchedule>,
}

#[utoipa::path(post, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}/backups", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    responses((status = 202, body = AddonBackup, description = "running; `completed` once stored in full"),
              (status = 409, body = crate::Problem, description = "the add-on is not ready")))]
pub async fn create_backup(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<AddonBackup>), ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    let backup = state
        .store
        .backup_addon(&principal.subject, &project, &environment, &name)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(backup.into())))
}

#[utoipa::path(get, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}/backups", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    responses((status = 200, body = [AddonBackup], description = "newest first, also those of a deleted add-on of that name")))]
pub async fn list_backups(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Answer<Vec<AddonBackup>> {
    principal.require(Permission::Read, Some(&project))?;
    let backups = state.store.addon_backups(&project, &environment, &name).await?;
    Ok(Json(backups.into_iter().map(AddonBackup::from).collect()))
}

#[utoipa::path(post, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}/restore", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    request_body = RestoreBody,
    responses((status = 202, body = RestoreAccepted, description = "the restore job runs; it checks the backup's SHA-256 first"),
              (status = 404, body = crate::Problem, description = "no such backup of this add-on"),
              (status = 409, body = crate::Problem, description = "the backup is not completed, or the add-on not ready"),
              (status = 400, body = crate::Problem, description = "the backup's kind differs from the add-on's")))]
pub async fn restore_backup(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
    Body(req): Body<RestoreBody>,
) -> Result<(StatusCode, Json<RestoreAccepted>), ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    let restore = state
        .store
        .restore_addon(
            &principal.subject,
            &project,
            &environment,
            &name,
            req.backup,
            req.into.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RestoreAccepted {
            job: restore.job,
            backup: restore.backup,
            addon: restore.addon,
            environment: restore.environment,
        }),
    ))
}

#[utoipa::path(patch, path = "/v1/projects/{project}/environments/{environment}/addons/{addon}", tag = "addons",
    params(("project" = String, Path, description = "Project slug"), ("environment" = String, Path, description = "Environment name"),
           ("addon" = String, Path, description = "Add-on name")),
    request_body = AddonChange,
    responses((status = 200, body = Addon)))]
pub async fn change_addon(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment, name)): Path<(String, String, String)>,
    Body(req): Body<AddonChange>,
) -> Answer<Addon> {
    principal.require(Permission::Deploy, Some(&project))?;
    let policy = req.backup.map(BackupSchedule::policy).transpose()?;
    let row = state
        .store
        .set_addon_backup_policy(&principal.subject, &project, &environment, &name, policy.as_ref())
        .await?;
    Ok(Json(view(&state, row).await?))
}
