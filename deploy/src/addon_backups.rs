//! `addon-backup` and `addon-restore`: dumps streamed from the deploy target through a sealed
//! stream into the artefact store, and back.
//!
//! A backup is three stages joined by in-memory pipes — the target's dump tool, [`sealed::seal`]
//! with the backup's data key, and [`ArtefactStore::put_stream`] — so memory stays at a few
//! buffers whatever the database's size. The artefact becomes visible only when all three
//! ended well ([`PendingArtefact::commit`](enclii_artefacts::PendingArtefact)), and only then is
//! the backup recorded `completed` with its size and SHA-256. A restore first reads the stored
//! artefact once to check size and SHA-256 against the record, then streams it through
//! [`sealed::open`] into the target's restore tool.

use std::sync::Arc;

use async_trait::async_trait;
use enclii_artefacts::{ArtefactConfig, ArtefactError, ArtefactStore, DataKey, SealError, Sealed, sealed};
use enclii_deploy_contract::Target;
use enclii_deploy_contract::error::DeployError;
use enclii_domain::jobs::{AddonBackup, AddonRestore};
use enclii_store::{AddonBackupRecord, BackupOutcome, BackupStatus, Store};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use tracing::{info, warn};

use crate::addons::{ACTOR, workload};
use crate::handlers::Failure;

/// The in-memory pipes between the stages.
const PIPE: usize = 256 * 1024;

/// Why a backup or restore attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("{0}")]
    Target(#[from] DeployError),
    #[error("{0}")]
    Artefacts(#[from] ArtefactError),
    #[error("{0}")]
    Sealing(#[from] SealError),
    #[error("{0}")]
    Checksum(String),
    #[error("{doing}: {source}")]
    During {
        doing: String,
        #[source]
        source: Box<StageError>,
    },
}

impl StageError {
    /// The same failure, said to have happened while `doing`.
    pub(crate) fn context(self, doing: String) -> Self {
        StageError::During {
            doing,
            source: Box::new(self),
        }
    }

    /// Whether another attempt may pass (the store or the engine hiccupped).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StageError::Target(e) => !e.is_permanent(),
            StageError::Artefacts(e) => e.is_transient(),
            StageError::Sealing(SealError::Read(_) | SealError::Write(_)) => true,
            StageError::Sealing(SealError::Corrupt(_)) | StageError::Checksum(_) => false,
            StageError::During { source, .. } => source.is_transient(),
        }
    }
}

#[derive(Clone)]
struct Backups {
    store: Arc<Store>,
    target: Arc<dyn Target>,
    artefacts: Option<ArtefactConfig>,
}

async fn artefact_store(config: Option<&ArtefactConfig>) -> Result<ArtefactStore, StageError> {
    let config = config.ok_or_else(|| {
        StageError::Target(DeployError::Refused(
            "this worker has no artefact store configured for backups; set ENCLII_S3_BUCKET or run it with a data \
             directory"
                .into(),
        ))
    })?;
    Ok(ArtefactStore::connect(config).await?)
}

/// Checks the stored artefact against the record, then download → open → restore.
pub(crate) async fn restore_from(
    target: &dyn Target,
    artefacts: Option<&ArtefactConfig>,
    work: &enclii_store::RestoreWork,
) -> Result<(), StageError> {
    let artefacts = artefact_store(artefacts).await?;
    let backup = &work.backup;
    let (size, sha256) = sealed::digest(artefacts.get_stream(&backup.artefact_key).await?).await?;
    let recorded = (backup.size_bytes.unwrap_or(-1), backup.sha256.as_deref().unwrap_or(""));
    if (size as i64, sha256.as_str()) != recorded {
        return Err(StageError::Checksum(format!(
            "backup {} fails its checksum: the stored artefact {} has SHA-256 {sha256} ({size} bytes), the backup \
             recorded {} ({} bytes); it was altered or damaged — restore another backup",
            backup.id, backup.artefact_key, recorded.1, recorded.0
        )));
    }
    let key = DataKey::from_bytes(&work.data_key)?;
    let source = artefacts.get_stream(&backup.artefact_key).await?;
    let (plain_in, mut plain_out) = tokio::io::duplex(PIPE);
    let workload = workload(&work.into);
    let open = async { Ok::<_, StageError>(sealed::open(&key, source, plain_in).await?) };
    let load = async {
        target.restore_addon(&workload, &mut plain_out).await?;
        Ok::<_, StageError>(())
    };
    let (bytes, ()) = tokio::try_join!(open, load)?;
    info!(backup = backup.id, addon = %work.into.addon.name, bytes, "add-on restored");
    Ok(())
}

impl Backups {
    async fn artefact_store(&self) -> Result<ArtefactStore, StageError> {
        artefact_store(self.artefacts.as_ref()).await
    }

    async fn backup(&self, job: AddonBackup, ctx: &JobContext) -> Result<(), Failure> {
        let Some(work) = self.store.backup_for_job(job.backup).await? else {
            return Ok(());
        };
        if work.backup.status != BackupStatus::Running {
            return Ok(());
        }
        let attempt = match &work.addon {
            Some(addon) => self.stream_backup(&work.backup, &work.data_key, addon).await,
            None => Err(StageError::Target(DeployError::NotFound(format!(
                "add-on `{}` was deleted before its backup ran",
                work.backup.addon
            )))),
        };
        match attempt {
            Ok(sealed) => {
                let outcome = BackupOutcome::Completed {
                    size_bytes: sealed.sealed_bytes,
                    plain_bytes: sealed.plain_bytes,
                    sha256: sealed.sha256,
                };
                let excess = self.store.record_addon_backup(job.backup, &outcome).await?;
                info!(
                    backup = job.backup,
                    bytes = sealed.sealed_bytes,
                    "add-on backup completed"
                );
                self.prune(excess).await;
                Ok(())
            }
            Err(e) if e.is_transient() && !ctx.is_last_attempt() => Err(JobError::Retry(e.to_string()).into()),
            Err(e) => {
                let why = e.to_string();
                self.store
                    .record_addon_backup(job.backup, &BackupOutcome::Failed(why.clone()))
                    .await?;
                Err(JobError::Abort(why).into())
            }
        }
    }

    /// Dump → seal → upload, concurrently; commits the artefact only when all three succeeded.
    async fn stream_backup(
        &self,
        backup: &AddonBackupRecord,
        data_key: &[u8],
        addon: &enclii_store::AddonAccess,
    ) -> Result<Sealed, StageError> {
        let artefacts = self.artefact_store().await?;
        let key = DataKey::from_bytes(data_key)?;
        let (mut dump_in, dump_out) = tokio::io::duplex(PIPE);
        let (sealed_in, sealed_out) = tokio::io::duplex(PIPE);
        let workload = workload(addon);
        let dump = async {
            self.target.backup_addon(&workload, &mut dump_in).await?;
            Ok::<_, StageError>(())
        };
        let seal = async { Ok::<_, StageError>(sealed::seal(&key, dump_out, sealed_in).await?) };
        let upload = async {
            Ok::<_, StageError>(
                artefacts
                    .put_stream(&backup.artefact_key, sealed_out, "application/octet-stream")
                    .await?,
            )
        };
        let ((), sealed, pending) = tokio::try_join!(dump, seal, upload)?;
        if pending.size != sealed.sealed_bytes {
            return Err(StageError::Checksum(format!(
                "the store received {} bytes of the {} sealed; the upload was cut short",
                pending.size, sealed.sealed_bytes
            )));
        }
        pending.commit().await?;
        Ok(sealed)
    }

    /// Deletes the backups beyond the add-on's `keep` (their artefacts first, then their rows);
    /// what fails stays for the next backup's pass.
    async fn prune(&self, excess: Vec<AddonBackupRecord>) {
        if excess.is_empty() {
            return;
        }
        let artefacts = match self.artefact_store().await {
            Ok(artefacts) => artefacts,
            Err(e) => return warn!(error = %e, "could not prune old backups"),
        };
        let mut gone = Vec::new();
        for backup in excess {
            match artefacts.delete(&backup.artefact_key).await {
                Ok(()) => gone.push(backup.id),
                Err(e) => warn!(backup = backup.id, error = %e, "could not delete an old backup"),
            }
        }
        if let Err(e) = self.store.forget_addon_backups(&gone).await {
            warn!(error = %e, "could not forget pruned backups");
        }
    }

    async fn restore(&self, job: AddonRestore, ctx: &JobContext) -> Result<(), Failure> {
        let Some(work) = self.store.restore_for_job(job.backup, job.addon).await? else {
            info!(
                backup = job.backup,
                addon = job.addon,
                "backup or add-on gone; nothing to restore"
            );
            return Ok(());
        };
        match restore_from(self.target.as_ref(), self.artefacts.as_ref(), &work).await {
            Ok(()) => {
                self.store
                    .record_addon_restore(ACTOR, job.backup, job.addon, None)
                    .await?;
                Ok(())
            }
            Err(e) if e.is_transient() && !ctx.is_last_attempt() => Err(JobError::Retry(e.to_string()).into()),
            Err(e) => {
                let why = e.to_string();
                self.store
                    .record_addon_restore(ACTOR, job.backup, job.addon, Some(&why))
                    .await?;
                Err(JobError::Abort(why).into())
            }
        }
    }
}

#[async_trait]
impl TypedHandler<AddonBackup> for Backups {
    async fn handle(&self, job: AddonBackup, ctx: &JobContext) -> Result<(), JobError> {
        self.backup(job, ctx).await.map_err(|Failure(e)| e)
    }
}

#[async_trait]
impl TypedHandler<AddonRestore> for Backups {
    async fn handle(&self, job: AddonRestore, ctx: &JobContext) -> Result<(), JobError> {
        self.restore(job, ctx).await.map_err(|Failure(e)| e)
    }
}

/// Registers `addon-backup` and `addon-restore`.
pub(crate) fn register(
    registry: &mut Registry,
    store: Arc<Store>,
    target: Arc<dyn Target>,
    artefacts: Option<ArtefactConfig>,
) {
    let backups = Backups {
        store,
        target,
        artefacts,
    };
    registry
        .register_typed::<AddonBackup, _>(backups.clone())
        .register_typed::<AddonRestore, _>(backups);
}
