//! Add-ons: databases (PostgreSQL, Redis) a project environment runs beside its services.
//!
//! An add-on is created `provisioning` with generated credentials (sealed with the master key,
//! bound to the add-on) and an `addon-provision` job of generation 1 in the same transaction; the
//! job records `ready` or `failed`. A rotation makes generation `g + 1` with a new login (the two
//! logins alternate, see `enclii_domain::addons::generation_user`), keeps the previous one sealed
//! until an `addon-retire` job disables it, and — once the provision job has applied the new login
//! on the target — rolls every service of the environment whose spec reads the add-on. A job of a
//! generation that is no longer current records nothing.

use std::time::Duration;

use enclii_domain::addons::{AddonCredentials, AddonKind, BackupPolicy};
use enclii_domain::jobs::{AddonProvision, AddonRemove, AddonRetire};
use enclii_queue::NewJob;
use serde::Serialize;
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as};
use crate::deployments::roll_serving;
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::sealing::MasterKey;
use crate::{Store, now_ms};

/// An add-on's row, without its credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Addon {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub name: String,
    pub kind: String,
    pub version: String,
    pub image: String,
    pub size_mib: Option<i64>,
    pub status: AddonStatus,
    pub detail: Option<String>,
    pub generation: i64,
    pub ready_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The backup schedule (5-field cron, UTC), if any, and how many completed backups it keeps.
    pub backup_schedule: Option<String>,
    pub backup_keep: Option<i64>,
    /// The parent's backup a preview's add-on is restored from before it is ready.
    pub seed_backup: Option<i64>,
}

/// The columns of [`Addon`] (the sealed credentials stay in the database).
macro_rules! columns {
    () => {
        "id, project, environment, name, kind, version, image, size_mib, status, detail, generation, ready_at, \
         created_at, updated_at, backup_schedule, backup_keep, seed_backup"
    };
}

impl Addon {
    /// Its kind; a stored word this version does not know is a corrupt row, not a panic.
    pub fn kind(&self) -> Result<AddonKind> {
        AddonKind::parse(&self.kind).map_err(|e| StoreError::Corrupt(format!("add-on {}: {e}", self.id)))
    }
}

/// An add-on to create; its fields are validated by the caller.
#[derive(Clone, Debug)]
pub struct NewAddon {
    pub project: String,
    pub environment: String,
    pub name: String,
    pub kind: AddonKind,
    pub version: String,
    pub image: String,
    pub size_mib: Option<i64>,
    /// Scheduled backups, validated by the caller.
    pub backup: Option<BackupPolicy>,
    /// A backup (of the same kind) to restore before it is ready.
    pub seed_backup: Option<i64>,
}

/// An add-on with its current credentials and, during a rotation, the previous ones (what the
/// deploy target and the deployer need; never the API's answer).
#[derive(Clone, Debug)]
pub struct AddonAccess {
    pub addon: Addon,
    pub kind: AddonKind,
    pub credentials: AddonCredentials,
    pub previous: Option<AddonCredentials>,
}

/// The add-ons a preview environment needs: those of `names` its home environment has.
#[derive(Clone, Copy, Debug)]
pub struct PreviewAddons<'a> {
    pub project: &'a str,
    /// The preview environment (`preview-<n>`).
    pub preview: &'a str,
    /// The service's home environment, whose add-ons the preview's are made like.
    pub home: &'a str,
    /// The add-ons the service's spec reads.
    pub names: &'a [&'a str],
    /// Start each from the home add-on's latest completed backup (`spec.previews.seedAddons`).
    pub seed: bool,
}

/// How an `addon-provision` job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionOutcome {
    Ready,
    Failed(String),
}

fn binding(id: i64, generation: i64) -> String {
    format!("addon:{id}:{generation}")
}

fn seal(key: &MasterKey, id: i64, generation: i64, credentials: &AddonCredentials) -> Result<String> {
    let json = serde_json::to_vec(credentials).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    key.seal(&json, &binding(id, generation))
}

fn open(key: &MasterKey, id: i64, generation: i64, sealed: &str) -> Result<AddonCredentials> {
    let json = key.open(sealed, &binding(id, generation))?;
    serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt(format!("add-on {id}'s credentials: {e}")))
}

fn provision_job(addon: &Addon) -> Result<NewJob> {
    let job = AddonProvision {
        addon: addon.id,
        generation: addon.generation,
    };
    Ok(NewJob::typed(&addon.project, &job)?)
}

pub(crate) async fn find_addon(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    name: &str,
) -> Result<Option<Addon>> {
    query_as::<Addon>(concat!(
        "SELECT ",
        columns!(),
        " FROM addons WHERE project = $1 AND environment = $2 AND name = $3"
    ))
    .binds((project, environment, name))
    .fetch_optional(&mut *conn)
    .await
}

pub(crate) async fn get_addon(conn: &mut Conn<'_>, project: &str, environment: &str, name: &str) -> Result<Addon> {
    find_addon(conn, project, environment, name).await?.ok_or_else(|| {
        StoreError::NotFound(format!(
            "add-on `{name}` does not exist in environment `{environment}` of project `{project}`"
        ))
    })
}

pub(crate) async fn addon_by_id(conn: &mut Conn<'_>, id: i64) -> Result<Option<Addon>> {
    query_as::<Addon>(concat!("SELECT ", columns!(), " FROM addons WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn access(conn: &mut Conn<'_>, key: &MasterKey, addon: Addon) -> Result<AddonAccess> {
    let (sealed, previous): (String, Option<String>) =
        query_as("SELECT credentials, previous_credentials FROM addons WHERE id = $1")
            .bind(addon.id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(AddonAccess {
        kind: addon.kind()?,
        credentials: open(key, addon.id, addon.generation, &sealed)?,
        previous: previous
            .map(|p| open(key, addon.id, addon.generation - 1, &p))
            .transpose()?,
        addon,
    })
}

pub(crate) async fn create_addon(conn: &mut Conn<'_>, key: &MasterKey, actor: &str, new: &NewAddon) -> Result<Addon> {
    require_project(conn, &new.project).await?;
    get_environment(conn, &new.project, &new.environment).await?;
    if let Some(held) = find_addon(conn, &new.project, &new.environment, &new.name).await? {
        return Err(StoreError::Conflict(format!(
            "add-on `{}` already exists in environment `{}` ({} {}, {}); choose another name or delete it first",
            new.name, new.environment, held.kind, held.version, held.status
        )));
    }
    let now = now_ms();
    // The sealed credentials are bound to the row's id, known only after the insert.
    let addon = query_as::<Addon>(concat!(
        "INSERT INTO addons (project, environment, name, kind, version, image, size_mib, status, credentials,
                             created_at, updated_at, backup_schedule, backup_keep, backup_next_at, seed_backup)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9, $9, $10, $11, $12, $13) RETURNING ",
        columns!(),
        ""
    ))
    .binds((
        &new.project,
        &new.environment,
        &new.name,
        new.kind.as_str(),
        &new.version,
        &new.image,
        new.size_mib,
        AddonStatus::Provisioning,
        now,
        new.backup.as_ref().map(|b| b.schedule.as_str()),
        new.backup.as_ref().map(|b| i64::from(b.keep)),
        new.backup
            .as_ref()
            .and_then(|b| crate::timetable::next_fire(&b.schedule, now)),
    ))
    .bind(new.seed_backup)
    .fetch_one(&mut *conn)
    .await?;
    let credentials = AddonCredentials::generate(new.kind, addon.generation);
    query("UPDATE addons SET credentials = $1 WHERE id = $2")
        .binds((seal(key, addon.id, addon.generation, &credentials)?, addon.id))
        .execute(&mut *conn)
        .await?;
    let diff = json!({"kind": addon.kind, "version": addon.version, "image": addon.image,
                      "size_mib": addon.size_mib, "environment": addon.environment,
                      "backup": {"schedule": addon.backup_schedule, "keep": addon.backup_keep},
                      "seed_backup": addon.seed_backup});
    audit_addon(conn, actor, "addon.create", &addon, diff).await?;
    conn.enqueue(provision_job(&addon)?).await?;
    Ok(addon)
}

/// Records `action` on the add-on (`<project>/<environment>/<name>`) in the audit trail.
pub(crate) async fn audit_addon(
    conn: &mut Conn<'_>,
    actor: &str,
    action: &str,
    addon: &Addon,
    diff: serde_json::Value,
) -> Result<()> {
    let entity = format!("{}/{}/{}", addon.project, addon.environment, addon.name);
    audit(
        conn,
        actor,
        change(action, "addon", &entity, Some(&addon.project), diff),
    )
    .await
}

pub(crate) async fn list_addons(conn: &mut Conn<'_>, project: &str, environment: Option<&str>) -> Result<Vec<Addon>> {
    require_project(conn, project).await?;
    query_as::<Addon>(concat!(
        "SELECT ",
        columns!(),
        " FROM addons WHERE project = $1 AND ($2 IS NULL OR environment = $2)
         ORDER BY environment, name"
    ))
    .binds((project, environment))
    .fetch_all(&mut *conn)
    .await
}

/// The services whose current spec reads add-on `name` and that live in `environment` (their home)
/// or were deployed there.
async fn readers(conn: &mut Conn<'_>, project: &str, environment: &str, name: &str) -> Result<Vec<String>> {
    let services = query_as::<Service>(
        "SELECT * FROM services WHERE project = $1
           AND (environment = $2 OR name IN (SELECT service FROM deployments WHERE project = $1 AND environment = $2))
         ORDER BY name",
    )
    .binds((project, environment))
    .fetch_all(&mut *conn)
    .await?;
    Ok(services
        .into_iter()
        .filter(|s| s.typed_spec().is_ok_and(|spec| spec.spec.addons().contains(&name)))
        .map(|s| s.name)
        .collect())
}

/// The current credentials, for a user who asked (audited; the answer is the caller's to show).
pub(crate) async fn reveal_credentials(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    actor: &str,
    project: &str,
    environment: &str,
    name: &str,
) -> Result<AddonAccess> {
    let addon = get_addon(conn, project, environment, name).await?;
    let diff = json!({"generation": addon.generation});
    audit_addon(conn, actor, "addon.credentials", &addon, diff).await?;
    access(conn, key, addon).await
}

/// Starts rotation `generation + 1`: new credentials for the alternate login, the previous ones
/// kept until retired, and an `addon-provision` job to apply them.
pub(crate) async fn rotate_addon(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    actor: &str,
    project: &str,
    environment: &str,
    name: &str,
) -> Result<Addon> {
    let addon = get_addon(conn, project, environment, name).await?;
    let current = access(conn, key, addon).await?;
    if current.addon.status == AddonStatus::Provisioning {
        return Err(StoreError::Conflict(format!(
            "add-on `{name}` is still provisioning (generation {}); rotate it once it is ready",
            current.addon.generation
        )));
    }
    let generation = current.addon.generation + 1;
    let fresh = AddonCredentials::generate(current.kind, generation);
    let id = current.addon.id;
    let addon = query_as::<Addon>(concat!(
        "UPDATE addons SET generation = $1, credentials = $2, previous_credentials = $3, status = $4, detail = NULL,
         updated_at = $5 WHERE id = $6 RETURNING ",
        columns!(),
        ""
    ))
    .binds((
        generation,
        seal(key, id, generation, &fresh)?,
        seal(key, id, generation - 1, &current.credentials)?,
        AddonStatus::Provisioning,
        now_ms(),
        id,
    ))
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"generation": {"from": generation - 1, "to": generation}});
    audit_addon(conn, actor, "addon.rotate", &addon, diff).await?;
    conn.enqueue(provision_job(&addon)?).await?;
    Ok(addon)
}

/// What an `addon-provision` or `addon-retire` job of `generation` works with, if that is still
/// the add-on's generation.
pub(crate) async fn addon_for_job(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    id: i64,
    generation: i64,
) -> Result<Option<AddonAccess>> {
    match addon_by_id(conn, id).await? {
        Some(addon) if addon.generation == generation => Ok(Some(access(conn, key, addon).await?)),
        _ => Ok(None),
    }
}

/// Records how generation `generation`'s provisioning ended. Ready after a rotation: rolls the
/// environment's services that read the add-on (reason `addon`) and enqueues retiring the
/// previous login after `grace`. `false` when the generation is no longer current.
pub(crate) async fn record_provision(
    conn: &mut Conn<'_>,
    actor: &str,
    id: i64,
    generation: i64,
    outcome: &ProvisionOutcome,
    grace: Duration,
) -> Result<bool> {
    let Some(addon) = addon_by_id(conn, id).await?.filter(|a| a.generation == generation) else {
        return Ok(false);
    };
    let now = now_ms();
    let (status, detail, ready_at) = match outcome {
        ProvisionOutcome::Ready => (AddonStatus::Ready, None, Some(now)),
        ProvisionOutcome::Failed(why) => (AddonStatus::Failed, Some(why.as_str()), addon.ready_at),
    };
    query("UPDATE addons SET status = $1, detail = $2, ready_at = $3, updated_at = $4 WHERE id = $5")
        .binds((status, detail, ready_at, now, id))
        .execute(&mut *conn)
        .await?;
    let mut rolled = Vec::new();
    if status == AddonStatus::Ready && generation > 1 {
        for service in readers(conn, &addon.project, &addon.environment, &addon.name).await? {
            let deployments = roll_serving(
                conn,
                actor,
                &addon.project,
                Some(&service),
                Some(&addon.environment),
                "addon",
            )
            .await?;
            rolled.extend(deployments.into_iter().map(|d| d.id));
        }
        let job = AddonRetire { addon: id, generation };
        let run_at = chrono::Utc::now() + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::minutes(10));
        conn.enqueue(NewJob::typed(&addon.project, &job)?.run_at(run_at))
            .await?;
    }
    let action = match status {
        AddonStatus::Failed => "addon.fail",
        _ => "addon.ready",
    };
    let diff = json!({"generation": generation, "detail": detail, "rolled_deployments": rolled});
    audit_addon(conn, actor, action, &addon, diff).await?;
    Ok(true)
}

/// Forgets the previous login once the target disabled it.
pub(crate) async fn record_retired(conn: &mut Conn<'_>, id: i64, generation: i64) -> Result<()> {
    query("UPDATE addons SET previous_credentials = NULL WHERE id = $1 AND generation = $2")
        .binds((id, generation))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the add-on and enqueues removing it from the target. Refused (`409`, naming them)
/// while a service's spec reads it, unless `force`.
pub(crate) async fn delete_addon(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    environment: &str,
    name: &str,
    force: bool,
    keep_data: bool,
) -> Result<Addon> {
    let addon = get_addon(conn, project, environment, name).await?;
    let readers = readers(conn, project, environment, name).await?;
    if !readers.is_empty() && !force {
        let names = readers.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        return Err(StoreError::Conflict(format!(
            "add-on `{name}` is read by service(s) {names} (their specs' `fromAddon`/`envFrom: addon`); remove \
             those references and apply the specs first, or delete with `?force=true`"
        )));
    }
    remove_addon_rows(conn, project, std::slice::from_ref(&addon), keep_data).await?;
    let diff = json!({"kind": addon.kind, "keep_data": keep_data, "forced_despite": readers});
    audit_addon(conn, actor, "addon.delete", &addon, diff).await?;
    Ok(addon)
}

async fn remove_addon_rows(conn: &mut Conn<'_>, project: &str, addons: &[Addon], keep_data: bool) -> Result<()> {
    for addon in addons {
        query("DELETE FROM addons WHERE id = $1")
            .bind(addon.id)
            .execute(&mut *conn)
            .await?;
        let job = AddonRemove {
            environment: addon.environment.clone(),
            name: addon.name.clone(),
            keep_data,
        };
        conn.enqueue(NewJob::typed(project, &job)?).await?;
    }
    Ok(())
}

/// With a project or environment deletion: every add-on in it goes, with its removal job.
pub(crate) async fn remove_addons_of(
    conn: &mut Conn<'_>,
    project: &str,
    environment: Option<&str>,
    keep_data: bool,
) -> Result<()> {
    let addons = query_as::<Addon>(concat!(
        "SELECT ",
        columns!(),
        " FROM addons WHERE project = $1 AND ($2 IS NULL OR environment = $2)"
    ))
    .binds((project, environment))
    .fetch_all(&mut *conn)
    .await?;
    remove_addon_rows(conn, project, &addons, keep_data).await
}

/// A preview's own add-ons: each of `names` (those the service's spec reads) that the preview
/// environment lacks is created there like the home environment's of that name — same kind,
/// version, image and size; its own credentials and empty data — and provisioned. Returns the
/// names created. A preview never reads its parent's data — unless `seed`: then each starts from
/// the parent's latest completed backup, when there is one (restored before it is ready).
pub(crate) async fn ensure_preview_addons(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    actor: &str,
    wanted: &PreviewAddons<'_>,
) -> Result<Vec<String>> {
    let PreviewAddons {
        project,
        preview,
        home,
        names,
        seed,
    } = *wanted;
    let mut created = Vec::new();
    for name in names {
        if find_addon(conn, project, preview, name).await?.is_some() {
            continue;
        }
        let Some(parent) = find_addon(conn, project, home, name).await? else {
            continue;
        };
        let new = NewAddon {
            project: project.to_string(),
            environment: preview.to_string(),
            name: parent.name.clone(),
            kind: parent.kind()?,
            version: parent.version.clone(),
            image: parent.image.clone(),
            size_mib: parent.size_mib,
            // A preview's data is short-lived: no schedule of its own.
            backup: None,
            seed_backup: match seed {
                true => crate::addon_backups::latest_completed(conn, project, home, name).await?,
                false => None,
            },
        };
        create_addon(conn, key, actor, &new).await?;
        created.push(parent.name);
    }
    Ok(created)
}

/// Every add-on of the environment with its credentials, for a deploy that reads them.
pub(crate) async fn environment_addons(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    project: &str,
    environment: &str,
) -> Result<Vec<AddonAccess>> {
    let addons = list_addons(conn, project, Some(environment)).await?;
    let mut out = Vec::with_capacity(addons.len());
    for addon in addons {
        out.push(access(conn, key, addon).await?);
    }
    Ok(out)
}

impl Store {
    /// Creates an add-on and enqueues its provisioning.
    pub async fn create_addon(&self, actor: &str, addon: &NewAddon) -> Result<Addon> {
        let key = &self.key;
        self.write(async |conn| create_addon(conn, key, actor, addon).await)
            .await
    }
    pub async fn list_addons(&self, project: &str, environment: Option<&str>) -> Result<Vec<Addon>> {
        self.read(async |conn| list_addons(conn, project, environment).await)
            .await
    }
    pub async fn addon(&self, project: &str, environment: &str, name: &str) -> Result<Addon> {
        self.read(async |conn| get_addon(conn, project, environment, name).await)
            .await
    }
    /// Creates in preview environment `preview` the add-ons of `names` it lacks, like the home
    /// environment's (see `ensure_preview_addons`); returns the names created.
    pub async fn ensure_preview_addons(&self, actor: &str, wanted: &PreviewAddons<'_>) -> Result<Vec<String>> {
        let key = &self.key;
        self.write(async |conn| ensure_preview_addons(conn, key, actor, wanted).await)
            .await
    }
    /// The add-on's services: those whose spec reads it.
    pub async fn addon_readers(&self, project: &str, environment: &str, name: &str) -> Result<Vec<String>> {
        self.read(async |conn| readers(conn, project, environment, name).await)
            .await
    }
    /// The current credentials, audited as `addon.credentials`.
    pub async fn reveal_addon_credentials(
        &self,
        actor: &str,
        project: &str,
        environment: &str,
        name: &str,
    ) -> Result<AddonAccess> {
        let key = &self.key;
        self.write(async |conn| reveal_credentials(conn, key, actor, project, environment, name).await)
            .await
    }
    pub async fn rotate_addon(&self, actor: &str, project: &str, environment: &str, name: &str) -> Result<Addon> {
        let key = &self.key;
        self.write(async |conn| rotate_addon(conn, key, actor, project, environment, name).await)
            .await
    }
    pub async fn delete_addon(
        &self,
        actor: &str,
        project: &str,
        environment: &str,
        name: &str,
        force: bool,
        keep_data: bool,
    ) -> Result<Addon> {
        self.write(async |conn| delete_addon(conn, actor, project, environment, name, force, keep_data).await)
            .await
    }
    /// For the `addon-provision`/`addon-retire` job of `generation`: the add-on if that is still
    /// its generation.
    pub async fn addon_for_job(&self, id: i64, generation: i64) -> Result<Option<AddonAccess>> {
        let key = &self.key;
        self.read(async |conn| addon_for_job(conn, key, id, generation).await)
            .await
    }
    pub async fn record_addon_provision(
        &self,
        actor: &str,
        id: i64,
        generation: i64,
        outcome: &ProvisionOutcome,
        grace: Duration,
    ) -> Result<bool> {
        self.write(async |conn| record_provision(conn, actor, id, generation, outcome, grace).await)
            .await
    }
    pub async fn record_addon_retired(&self, id: i64, generation: i64) -> Result<()> {
        self.write(async |conn| record_retired(conn, id, generation).await)
            .await
    }
}
