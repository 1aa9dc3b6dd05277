//! Add-on backups and restores: the rows, the sealed data keys, schedules and retention.
//!
//! A backup is asked for (on demand, or by the add-on's schedule) as a `running` row with a fresh
//! data key, sealed with the master key and bound to the backup's id, and an `addon-backup` job in
//! the same transaction. The job streams the dump to the artefact store and records `completed`
//! with the artefact's size and SHA-256, or `failed` with the reason; only `completed` backups
//! restore. A restore is an `addon-restore` job for a completed backup and an add-on of the same
//! kind (the backup's own add-on, or another in the project).

use enclii_domain::addons::{AddonKind, BackupPolicy};
use enclii_domain::jobs::{AddonBackup, AddonRestore};
use enclii_queue::NewJob;
use serde::Serialize;
use serde_json::json;

use crate::addons::{Addon, AddonAccess, access, addon_by_id, audit_addon, get_addon};
use crate::db::{Conn, query, query_as};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::sealing::MasterKey;
use crate::timetable::next_fire;
use crate::{Store, now_ms};

/// Who fires scheduled backups, in the audit trail.
pub const BACKUP_SCHEDULER: &str = "system:backup-schedule";

/// A backup's row, without its data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AddonBackupRecord {
    pub id: i64,
    pub project: String,
    pub environment: String,
    /// The add-on's name (the backup outlives the add-on).
    pub addon: String,
    pub kind: String,
    pub trigger: BackupTrigger,
    pub status: BackupStatus,
    /// Where the sealed artefact is kept in the artefact store.
    pub artefact_key: String,
    /// The stored (sealed) artefact's size.
    pub size_bytes: Option<i64>,
    /// The dump's own size before sealing.
    pub plain_bytes: Option<i64>,
    /// SHA-256 (hex) of the stored artefact, checked before every restore.
    pub sha256: Option<String>,
    pub detail: Option<String>,
    pub requested_by: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

macro_rules! columns {
    () => {
        "id, project, environment, addon, kind, trigger, status, artefact_key, size_bytes, plain_bytes, sha256, \
         detail, requested_by, created_at, completed_at"
    };
}

impl AddonBackupRecord {
    pub fn kind(&self) -> Result<AddonKind> {
        AddonKind::parse(&self.kind).map_err(|e| StoreError::Corrupt(format!("backup {}: {e}", self.id)))
    }
}

/// What an `addon-backup` job works with: the backup, its data key, and the add-on as it is now
/// (`None` when the add-on was deleted meanwhile).
#[derive(Debug)]
pub struct BackupWork {
    pub backup: AddonBackupRecord,
    pub data_key: Vec<u8>,
    pub addon: Option<AddonAccess>,
}

/// What an `addon-restore` job works with.
#[derive(Debug)]
pub struct RestoreWork {
    pub backup: AddonBackupRecord,
    pub data_key: Vec<u8>,
    pub into: AddonAccess,
}

/// How an `addon-backup` job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupOutcome {
    Completed {
        size_bytes: u64,
        plain_bytes: u64,
        sha256: String,
    },
    Failed(String),
}

/// A restore asked for: the job that runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreRequest {
    pub job: i64,
    pub backup: i64,
    pub addon: String,
    pub environment: String,
}

fn key_binding(id: i64) -> String {
    format!("addon-backup:{id}")
}

async fn backup_by_id(conn: &mut Conn<'_>, id: i64) -> Result<Option<AddonBackupRecord>> {
    query_as::<AddonBackupRecord>(concat!("SELECT ", columns!(), " FROM addon_backups WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
}

async fn data_key(conn: &mut Conn<'_>, key: &MasterKey, id: i64) -> Result<Vec<u8>> {
    let (sealed,): (String,) = query_as("SELECT data_key FROM addon_backups WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    key.open(&sealed, &key_binding(id))
}

/// Writes a `running` backup of the add-on with its sealed data key, and its job.
pub(crate) async fn start_backup(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    actor: &str,
    addon: &Addon,
    trigger: BackupTrigger,
) -> Result<AddonBackupRecord> {
    if addon.status != AddonStatus::Ready {
        return Err(StoreError::Conflict(format!(
            "add-on `{}` is {}{}; back it up once it is ready",
            addon.name,
            addon.status,
            addon.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        )));
    }
    let kind = addon.kind()?;
    let now = now_ms();
    let inserted = query_as::<AddonBackupRecord>(concat!(
        "INSERT INTO addon_backups (project, environment, addon, kind, trigger, status, artefact_key, data_key,
                                    requested_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, '', '', $7, $8) RETURNING ",
        columns!(),
        ""
    ))
    .binds((
        &addon.project,
        &addon.environment,
        &addon.name,
        kind.as_str(),
        trigger,
        BackupStatus::Running,
        actor,
        now,
    ))
    .fetch_one(&mut *conn)
    .await?;
    // The key and the data key's binding need the row's id.
    let artefact_key = format!(
        "backups/{}/{}/{}/{}.{}.sealed",
        addon.project,
        addon.environment,
        addon.name,
        inserted.id,
        kind.backup_format()
    );
    let mut data_key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data_key);
    query("UPDATE addon_backups SET artefact_key = $1, data_key = $2 WHERE id = $3")
        .binds((
            &artefact_key,
            key.seal(&data_key, &key_binding(inserted.id))?,
            inserted.id,
        ))
        .execute(&mut *conn)
        .await?;
    conn.enqueue(NewJob::typed(&addon.project, &AddonBackup { backup: inserted.id })?)
        .await?;
    let diff = json!({"backup": inserted.id, "trigger": trigger});
    audit_addon(conn, actor, "addon.backup", addon, diff).await?;
    Ok(AddonBackupRecord {
        artefact_key,
        ..inserted
    })
}

pub(crate) async fn list_backups(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    name: &str,
) -> Result<Vec<AddonBackupRecord>> {
    crate::projects::require_project(conn, project).await?;
    query_as::<AddonBackupRecord>(concat!(
        "SELECT ",
        columns!(),
        " FROM addon_backups WHERE project = $1 AND environment = $2 AND addon = $3 ORDER BY id DESC"
    ))
    .binds((project, environment, name))
    .fetch_all(&mut *conn)
    .await
}

/// The id of the newest completed backup of add-on `name` in `environment`, if any.
pub(crate) async fn latest_completed(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    name: &str,
) -> Result<Option<i64>> {
    let latest: Option<(i64,)> = query_as(
        "SELECT id FROM addon_backups WHERE project = $1 AND environment = $2 AND addon = $3 AND status = $4
         ORDER BY id DESC LIMIT 1",
    )
    .binds((project, environment, name, BackupStatus::Completed))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(latest.map(|(id,)| id))
}

pub(crate) async fn backup_for_job(conn: &mut Conn<'_>, key: &MasterKey, id: i64) -> Result<Option<BackupWork>> {
    let Some(backup) = backup_by_id(conn, id).await? else {
        return Ok(None);
    };
    let data_key = data_key(conn, key, id).await?;
    let addon = match crate::addons::find_addon(conn, &backup.project, &backup.environment, &backup.addon).await? {
        Some(addon) => Some(access(conn, key, addon).await?),
        None => None,
    };
    Ok(Some(BackupWork {
        backup,
        data_key,
        addon,
    }))
}

/// Records how a backup ended. Completed: returns the completed backups of the add-on beyond its
/// schedule's `keep` (oldest first), whose artefacts the caller deletes before
/// [`forget_backups`]. A backup no longer `running` records nothing.
pub(crate) async fn record_backup(
    conn: &mut Conn<'_>,
    id: i64,
    outcome: &BackupOutcome,
) -> Result<Vec<AddonBackupRecord>> {
    let Some(backup) = backup_by_id(conn, id)
        .await?
        .filter(|b| b.status == BackupStatus::Running)
    else {
        return Ok(Vec::new());
    };
    let now = now_ms();
    match outcome {
        BackupOutcome::Completed {
            size_bytes,
            plain_bytes,
            sha256,
        } => {
            query(
                "UPDATE addon_backups SET status = $1, size_bytes = $2, plain_bytes = $3, sha256 = $4, completed_at = $5
                 WHERE id = $6",
            )
            .binds((BackupStatus::Completed, *size_bytes as i64, *plain_bytes as i64, sha256, now, id))
            .execute(&mut *conn)
            .await?;
        }
        BackupOutcome::Failed(why) => {
            query("UPDATE addon_backups SET status = $1, detail = $2, completed_at = $3 WHERE id = $4")
                .binds((BackupStatus::Failed, why, now, id))
                .execute(&mut *conn)
                .await?;
            return Ok(Vec::new());
        }
    }
    let keep = crate::addons::find_addon(conn, &backup.project, &backup.environment, &backup.addon)
        .await?
        .and_then(|a| a.backup_keep);
    let Some(keep) = keep else {
        return Ok(Vec::new());
    };
    let completed = query_as::<AddonBackupRecord>(concat!(
        "SELECT ",
        columns!(),
        " FROM addon_backups WHERE project = $1 AND environment = $2 AND addon = $3 AND status = $4 ORDER BY id"
    ))
    .binds((
        &backup.project,
        &backup.environment,
        &backup.addon,
        BackupStatus::Completed,
    ))
    .fetch_all(&mut *conn)
    .await?;
    let excess = completed
        .len()
        .saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    Ok(completed.into_iter().take(excess).collect())
}

/// Deletes backup rows whose artefacts are gone.
pub(crate) async fn forget_backups(conn: &mut Conn<'_>, ids: &[i64]) -> Result<()> {
    for id in ids {
        query("DELETE FROM addon_backups WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Asks for restoring backup `backup` into add-on `into` (default: the backup's own add-on, by
/// name, in `environment`). Refused unless the backup is completed, of the project and
/// environment named, and of the add-on's kind, and the add-on is ready.
pub(crate) async fn request_restore(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    environment: &str,
    name: &str,
    backup: i64,
    into: Option<&str>,
) -> Result<RestoreRequest> {
    let record = backup_by_id(conn, backup)
        .await?
        .filter(|b| b.project == project && b.environment == environment && b.addon == name)
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "backup {backup} is not a backup of add-on `{name}` in environment `{environment}`; \
                 list them with `enclii addons backups {name} --env {environment}`"
            ))
        })?;
    if record.status != BackupStatus::Completed {
        return Err(StoreError::Conflict(format!(
            "backup {backup} is {}{}; only a completed backup restores",
            record.status,
            record.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        )));
    }
    let target = get_addon(conn, project, environment, into.unwrap_or(name)).await?;
    if target.kind != record.kind {
        return Err(StoreError::Invalid(format!(
            "backup {backup} is a {} backup; add-on `{}` is {}: restore it into a {} add-on",
            record.kind, target.name, target.kind, record.kind
        )));
    }
    if target.status != AddonStatus::Ready {
        return Err(StoreError::Conflict(format!(
            "add-on `{}` is {}; restore into it once it is ready",
            target.name, target.status
        )));
    }
    let job = conn
        .enqueue(NewJob::typed(
            project,
            &AddonRestore {
                backup,
                addon: target.id,
            },
        )?)
        .await?;
    let diff = json!({"backup": backup, "from": format!("{}/{}", record.environment, record.addon),
                      "sha256": record.sha256, "job": job});
    audit_addon(conn, actor, "addon.restore", &target, diff).await?;
    Ok(RestoreRequest {
        job,
        backup,
        addon: target.name,
        environment: target.environment,
    })
}

pub(crate) async fn restore_for_job(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    backup: i64,
    addon: i64,
) -> Result<Option<RestoreWork>> {
    let (Some(record), Some(target)) = (backup_by_id(conn, backup).await?, addon_by_id(conn, addon).await?) else {
        return Ok(None);
    };
    let data_key = data_key(conn, key, backup).await?;
    Ok(Some(RestoreWork {
        backup: record,
        data_key,
        into: access(conn, key, target).await?,
    }))
}

/// Records in the audit trail how a restore into add-on `addon` ended (`addon.restored`, or
/// `addon.restore_failed` with the reason).
pub(crate) async fn record_restore(
    conn: &mut Conn<'_>,
    actor: &str,
    backup: i64,
    addon: i64,
    failure: Option<&str>,
) -> Result<()> {
    let Some(target) = addon_by_id(conn, addon).await? else {
        return Ok(());
    };
    let action = if failure.is_some() {
        "addon.restore_failed"
    } else {
        "addon.restored"
    };
    audit_addon(
        conn,
        actor,
        action,
        &target,
        json!({"backup": backup, "detail": failure}),
    )
    .await
}

/// Sets (or, with `None`, clears) the add-on's backup schedule; the next fire is the first
/// after now.
pub(crate) async fn set_backup_policy(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    environment: &str,
    name: &str,
    policy: Option<&BackupPolicy>,
) -> Result<Addon> {
    let addon = get_addon(conn, project, environment, name).await?;
    let next_at = policy.and_then(|p| next_fire(&p.schedule, now_ms()));
    query(
        "UPDATE addons SET backup_schedule = $1, backup_keep = $2, backup_next_at = $3, updated_at = $4 WHERE id = $5",
    )
    .binds((
        policy.map(|p| p.schedule.as_str()),
        policy.map(|p| i64::from(p.keep)),
        next_at,
        now_ms(),
        addon.id,
    ))
    .execute(&mut *conn)
    .await?;
    let diff = json!({"backup": {"from": {"schedule": addon.backup_schedule, "keep": addon.backup_keep},
                                 "to": policy.map(|p| json!({"schedule": p.schedule, "keep": p.keep}))}});
    audit_addon(conn, actor, "addon.backup_policy", &addon, diff).await?;
    get_addon(conn, project, environment, name).await
}

/// Starts the backups whose schedule is due (claimed by moving `backup_next_at` on, so two
/// schedulers never fire one twice). An add-on that is not ready skips this fire. Returns the
/// backups started.
pub(crate) async fn fire_due_backups(conn: &mut Conn<'_>, key: &MasterKey, now: i64) -> Result<Vec<i64>> {
    let due: Vec<(i64, String, i64)> = query_as(
        "SELECT id, backup_schedule, backup_next_at FROM addons
         WHERE backup_next_at IS NOT NULL AND backup_next_at <= $1 ORDER BY backup_next_at LIMIT 100",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut started = Vec::new();
    for (id, schedule, next_at) in due {
        let claimed = query("UPDATE addons SET backup_next_at = $1 WHERE id = $2 AND backup_next_at = $3")
            .binds((next_fire(&schedule, now), id, next_at))
            .execute(&mut *conn)
            .await?
            .rows_affected();
        let Some(addon) = addon_by_id(conn, id).await?.filter(|_| claimed == 1) else {
            continue;
        };
        if addon.status != AddonStatus::Ready {
            tracing::warn!(addon = %addon.name, project = %addon.project, status = %addon.status,
                "scheduled backup skipped: the add-on is not ready");
            continue;
        }
        started.push(
            start_backup(conn, key, BACKUP_SCHEDULER, &addon, BackupTrigger::Scheduled)
                .await?
                .id,
        );
    }
    Ok(started)
}

impl Store {
    /// Starts an on-demand backup of the add-on.
    pub async fn backup_addon(
        &self,
        actor: &str,
        project: &str,
        environment: &str,
        name: &str,
    ) -> Result<AddonBackupRecord> {
        let key = &self.key;
        self.write(async |conn| {
            let addon = get_addon(conn, project, environment, name).await?;
            start_backup(conn, key, actor, &addon, BackupTrigger::Manual).await
        })
        .await
    }
    /// The add-on's backups (also those of a deleted add-on of that name), newest first.
    pub async fn addon_backups(&self, project: &str, environment: &str, name: &str) -> Result<Vec<AddonBackupRecord>> {
        self.read(async |conn| list_backups(conn, project, environment, name).await)
            .await
    }
    pub async fn backup_for_job(&self, id: i64) -> Result<Option<BackupWork>> {
        let key = &self.key;
        self.read(async |conn| backup_for_job(conn, key, id).await).await
    }
    pub async fn record_addon_backup(&self, id: i64, outcome: &BackupOutcome) -> Result<Vec<AddonBackupRecord>> {
        self.write(async |conn| record_backup(conn, id, outcome).await).await
    }
    pub async fn forget_addon_backups(&self, ids: &[i64]) -> Result<()> {
        self.write(async |conn| forget_backups(conn, ids).await).await
    }
    pub async fn restore_addon(
        &self,
        actor: &str,
        project: &str,
        environment: &str,
        name: &str,
        backup: i64,
        into: Option<&str>,
    ) -> Result<RestoreRequest> {
        self.write(async |conn| request_restore(conn, actor, project, environment, name, backup, into).await)
            .await
    }
    pub async fn restore_for_job(&self, backup: i64, addon: i64) -> Result<Option<RestoreWork>> {
        let key = &self.key;
        self.read(async |conn| restore_for_job(conn, key, backup, addon).await)
            .await
    }
    pub async fn record_addon_restore(
        &self,
        actor: &str,
        backup: i64,
        addon: i64,
        failure: Option<&str>,
    ) -> Result<()> {
        self.write(async |conn| record_restore(conn, actor, backup, addon, failure).await)
            .await
    }
    pub async fn set_addon_backup_policy(
        &self,
        actor: &str,
        project: &str,
        environment: &str,
        name: &str,
        policy: Option<&BackupPolicy>,
    ) -> Result<Addon> {
        self.write(async |conn| set_backup_policy(conn, actor, project, environment, name, policy).await)
            .await
    }
    /// Starts the scheduled backups that are due (the scheduler's tick).
    pub async fn fire_due_backups(&self, now: i64) -> Result<Vec<i64>> {
        let key = &self.key;
        self.write(async |conn| fire_due_backups(conn, key, now).await).await
    }
}
