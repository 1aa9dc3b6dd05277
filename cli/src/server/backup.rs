//! Control-plane backups (issue 17): a consistent snapshot of the embedded SQLite database
//! (`VACUUM INTO` on a connection of its own, so a running server keeps serving) with the data
//! directory's keys, packed as one checked archive (`archive.rs`) in the artefact store or a file;
//! the scheduler role takes one every `ENCLII_CONTROL_PLANE_BACKUP_HOURS`. `enclii server restore`
//! brings a data directory back from one (`restore.rs`), or a PostgreSQL database from a
//! `pg_dump` file (`postgres.rs`). Operators' guide: docs/control-plane-backup.md.
//!
//! A snapshot holds `master.key` when the server's key lives in the data directory: without it
//! no secret of the snapshot opens, and a server given its key by `ENCLII_MASTER_KEY` keeps none
//! there (`--without-master-key` leaves it out of a one-off). So a snapshot is as sensitive as the
//! key: it is written 0600 and belongs in a bucket guarded like the key.

mod archive;
mod postgres;
mod restore;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use enclii_artefacts::{ArtefactConfig, ArtefactStore};
use enclii_store::MasterKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ServerArgs, announce};
use archive::Manifest;
pub use restore::{RestoreArgs, restore};

/// Where snapshots are kept in the artefact store.
const PREFIX: &str = "control-plane/";
const DATABASE: &str = "enclii.db";
const MASTER_KEY: &str = "master.key";
/// The data directory's files a snapshot carries besides the database: the keys the server
/// generates there and the Docker router's table (so routes answer again right after a restore
/// on the same host). Images, artefacts and build workspaces are not the control plane's state.
const KEPT_FILES: [&str; 5] = [
    MASTER_KEY,
    "cosign.key",
    "cosign.pub",
    "registry.password",
    "junctions.json",
];

/// Every file a snapshot may hold.
fn snapshot_files() -> Vec<&'static str> {
    std::iter::once(DATABASE).chain(KEPT_FILES).collect()
}

/// The schedule (scheduler role, embedded SQLite only).
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Hours between control-plane snapshots (database and keys) to the artefact store, taken by
    /// the scheduler role on SQLite; `0` takes none.
    #[arg(
        long = "control-plane-backup-hours",
        env = "ENCLII_CONTROL_PLANE_BACKUP_HOURS",
        default_value_t = 24
    )]
    hours: u64,
    /// Control-plane snapshots kept in the artefact store; older ones are deleted.
    #[arg(
        long = "control-plane-backup-keep",
        env = "ENCLII_CONTROL_PLANE_BACKUP_KEEP",
        default_value_t = 7
    )]
    keep: usize,
}

/// `enclii server backup`: takes a snapshot now.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Write the snapshot to this file (or into this directory) instead of the artefact store.
    #[arg(long)]
    to: Option<PathBuf>,
    /// Leave `master.key` out: for keys kept elsewhere; restoring then needs ENCLII_MASTER_KEY.
    #[arg(long)]
    without_master_key: bool,
}

/// A fingerprint of a master key that tells keys apart without revealing them.
fn fingerprint(key: &MasterKey) -> String {
    let digest = format!("{:x}", Sha256::digest(key.to_base64().as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// A private working directory in the data directory (same disk, same protection), removed when
/// dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(data_dir: &Path, purpose: &str) -> anyhow::Result<Self> {
        let path = data_dir.join(format!(".{purpose}-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {} (is the data directory writable?)", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            warn!(path = %self.0.display(), error = %e, "cannot remove a backup working directory; delete it by hand");
        }
    }
}

/// A snapshot packed in its working directory.
struct Snapshot {
    work: WorkDir,
    manifest: Manifest,
}

impl Snapshot {
    fn archive(&self) -> PathBuf {
        self.work.0.join("snapshot.tar.gz")
    }

    /// `enclii.db, master.key, cosign.key (1.2 MiB)`: the files and their total size.
    fn contents(&self) -> String {
        let names: Vec<_> = self.manifest.files.iter().map(|f| f.name.as_str()).collect();
        format!("{} ({})", names.join(", "), size(self.manifest.size()))
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// What a snapshot is taken of.
struct Source {
    data_dir: PathBuf,
    /// The SQLite database, or `None` for a server on PostgreSQL (its keys only).
    database: Option<PathBuf>,
    /// The key the server seals secrets with, and whether it lives in the data directory.
    key: Option<(MasterKey, bool)>,
    without_master_key: bool,
}

/// Copies the database (`VACUUM INTO`, a consistent copy while the server writes) and the kept
/// files into a working directory and packs them.
async fn take(source: &Source) -> anyhow::Result<Snapshot> {
    let work = WorkDir::create(&source.data_dir, "backup")?;
    let mut files = Vec::new();
    if let Some(database) = &source.database {
        let copy = work.0.join(DATABASE);
        vacuum_into(database, &copy).await?;
        files.push((DATABASE.to_string(), copy));
    }
    let key_in_dir = source.key.as_ref().is_some_and(|(_, in_dir)| *in_dir);
    for name in KEPT_FILES {
        if name == MASTER_KEY && (source.without_master_key || !key_in_dir) {
            continue;
        }
        let path = source.data_dir.join(name);
        let copy = work.0.join(name);
        // Copied, not read in place: the router rewrites its table at any time.
        match std::fs::copy(&path, &copy) {
            Ok(_) => files.push((name.to_string(), copy)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    let manifest = Manifest {
        format: archive::FORMAT,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        enclii_version: env!("CARGO_PKG_VERSION").to_string(),
        master_key_fingerprint: source.key.as_ref().map(|(key, _)| fingerprint(key)),
        files: Vec::new(),
    };
    let out = work.0.join("snapshot.tar.gz");
    let manifest = tokio::task::spawn_blocking(move || archive::pack(manifest, &files, &out))
        .await
        .context("packing the snapshot stopped")??;
    Ok(Snapshot { work, manifest })
}

/// `VACUUM INTO` on a connection of its own: a transaction's consistent view of the database,
/// written compactly to `copy`, while the server goes on reading and writing.
async fn vacuum_into(database: &Path, copy: &Path) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let failed = || format!("cannot copy the database {} (VACUUM INTO)", database.display());
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        // A large database takes seconds to copy: that is no slow query to warn about.
        .disable_statement_logging()
        .connect()
        .await
        .with_context(failed)?;
    let target = copy
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", copy.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut connection)
        .await
        .with_context(failed)?;
    connection.close().await.with_context(failed)
}

/// The store key of a snapshot taken now; times sort as text.
fn new_key() -> String {
    format!("{PREFIX}{}.tar.gz", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Uploads the snapshot; returns its URI.
async fn upload(snapshot: &Snapshot, store: &ArtefactStore) -> anyhow::Result<String> {
    let key = new_key();
    let file = tokio::fs::File::open(snapshot.archive()).await?;
    let pending = store.put_stream(&key, file, "application/gzip").await?;
    pending.commit().await?;
    Ok(store.uri(&key))
}

/// Copies the snapshot to `to` (a new file, or a new file in the directory `to`), 0600.
fn write_to(snapshot: &Snapshot, to: &Path) -> anyhow::Result<PathBuf> {
    let target = match to.is_dir() {
        true => to.join(new_key().replace(PREFIX, "enclii-control-plane-")),
        false => to.to_path_buf(),
    };
    if target.exists() {
        anyhow::bail!(
            "{} already exists; a backup never replaces a file: choose another --to",
            target.display()
        );
    }
    let partial = target.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
    let written = || format!("cannot write {} (is its directory writable?)", target.display());
    let result = (|| {
        let mut out = archive::create_private(&partial)?;
        std::io::copy(&mut std::fs::File::open(snapshot.archive())?, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&partial, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.with_context(written)?;
    Ok(target)
}

impl ServerArgs {
    /// What `backup` and the schedule take a snapshot of.
    fn backup_source(&self, without_master_key: bool) -> anyhow::Result<Source> {
        let database = match &self.database_url {
            Some(_) => None,
            None => {
                let path = self.data_dir.join(DATABASE);
                if !path.is_file() {
                    anyhow::bail!(
                        "no database at {}: point --data-dir (ENCLII_DATA_DIR) at the server's data directory",
                        path.display()
                    );
                }
                Some(path)
            }
        };
        let key = self.existing_master_key()?.map(|key| (key, self.master_key.is_none()));
        Ok(Source {
            data_dir: self.data_dir()?.to_path_buf(),
            database,
            key,
            without_master_key,
        })
    }
}

/// `enclii server backup`: a snapshot now, to the artefact store or `--to`.
pub async fn backup(args: &ServerArgs, backup: &BackupArgs) -> anyhow::Result<()> {
    let source = args.backup_source(backup.without_master_key)?;
    let snapshot = take(&source).await?;
    let place = match &backup.to {
        Some(to) => write_to(&snapshot, to)?.display().to_string(),
        None => {
            let config = args.build.artefacts(&args.data_dir);
            let store = ArtefactStore::connect(&config).await?;
            upload(&snapshot, &store).await?
        }
    };
    announce(&format!(
        "control-plane backup written to {place}: {}",
        snapshot.contents()
    ));
    if source.database.is_none() {
        announce(
            "the database is PostgreSQL and is not in it: back it up with pg_dump or PITR (docs/control-plane-backup.md)",
        );
    }
    if snapshot.manifest.holds(MASTER_KEY) {
        announce("it holds master.key, which opens every secret: keep it as safe as the key");
    } else if let Some(fingerprint) = &snapshot.manifest.master_key_fingerprint {
        announce(&format!(
            "it holds no master key: restoring needs ENCLII_MASTER_KEY set to the key {fingerprint}"
        ));
    }
    Ok(())
}

/// The scheduled snapshots of one server.
pub struct Schedule {
    source: Source,
    artefacts: ArtefactConfig,
    every: Duration,
    keep: usize,
}

impl Schedule {
    /// The schedule, or why there is none; a line for the startup summary either way.
    pub fn plan(args: &ServerArgs) -> anyhow::Result<(Option<Schedule>, String)> {
        let settings = &args.backups;
        if args.database_url.is_some() {
            return Ok((
                None,
                "off: PostgreSQL — use pg_dump or PITR (docs/control-plane-backup.md)".into(),
            ));
        }
        if settings.hours == 0 {
            return Ok((None, "off (ENCLII_CONTROL_PLANE_BACKUP_HOURS=0)".into()));
        }
        let artefacts = args.build.artefacts(&args.data_dir);
        let keep = settings.keep.max(1);
        let line = format!(
            "control plane every {} h to {PREFIX} in the artefact store, {} (keeps {keep}{})",
            settings.hours,
            artefacts.describe(),
            match artefacts {
                ArtefactConfig::Directory(_) => "; set ENCLII_S3_BUCKET to keep them off this disk",
                ArtefactConfig::S3(_) => "",
            }
        );
        let schedule = Schedule {
            source: args.backup_source(false)?,
            artefacts,
            every: Duration::from_secs(settings.hours.saturating_mul(3600)),
            keep,
        };
        Ok((Some(schedule), line))
    }

    /// How long until the next snapshot: `every` after the newest one kept, now when none is.
    async fn due_in(&self, store: &ArtefactStore) -> anyhow::Result<Duration> {
        let newest = store
            .list(PREFIX)
            .await?
            .into_iter()
            .filter(|a| a.key.ends_with(".tar.gz"))
            .map(|a| a.modified)
            .max();
        let Some(newest) = newest else {
            return Ok(Duration::ZERO);
        };
        let age = SystemTime::now().duration_since(newest).unwrap_or_default();
        Ok(self.every.saturating_sub(age))
    }

    /// One round: a snapshot if one is due, then pruning; returns how long to wait.
    async fn round(&self) -> anyhow::Result<Duration> {
        let store = ArtefactStore::connect(&self.artefacts).await?;
        let due = self.due_in(&store).await?;
        if !due.is_zero() {
            return Ok(due);
        }
        let snapshot = take(&self.source).await?;
        let uri = upload(&snapshot, &store).await?;
        info!(%uri, contents = %snapshot.contents(), "control-plane snapshot taken");
        let deleted = prune(&store, self.keep).await?;
        if deleted > 0 {
            info!(deleted, "deleted control-plane snapshots beyond the number kept");
        }
        Ok(self.every)
    }
}

/// Deletes all but the newest `keep` snapshots in the store; returns how many went.
async fn prune(store: &ArtefactStore, keep: usize) -> anyhow::Result<usize> {
    let mut keys: Vec<_> = store
        .list(PREFIX)
        .await?
        .into_iter()
        .map(|a| a.key)
        .filter(|k| k.ends_with(".tar.gz"))
        .collect();
    keys.sort();
    let old = keys.len().saturating_sub(keep);
    for key in &keys[..old] {
        store.delete(key).await?;
    }
    Ok(old)
}

/// Takes scheduled snapshots until shutdown. A failed round is logged and tried again within
/// an hour; it never stops the server.
pub async fn every(schedule: Schedule, shutdown: CancellationToken) -> anyhow::Result<()> {
    const RETRY: Duration = Duration::from_secs(3600);
    loop {
        let wait = match schedule.round().await {
            Ok(wait) => wait,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "control-plane snapshot failed; will try again"
                );
                RETRY.min(schedule.every)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pruning_keeps_the_newest_snapshots_and_nothing_else_is_touched() {
        let root = std::env::temp_dir().join(format!("enclii_backup_prune_{}", rand::random::<u64>()));
        let store = ArtefactStore::connect(&ArtefactConfig::Directory(root.clone()))
            .await
            .unwrap();
        let keys = ["20261201T000000.000Z", "20261203T000000.000Z", "20261202T000000.000Z"];
        for key in keys {
            store
                .put(&format!("{PREFIX}{key}.tar.gz"), vec![1], "application/gzip")
                .await
                .unwrap();
        }
        store
            .put("sources/a.tar.gz", vec![1], "application/gzip")
            .await
            .unwrap();
        assert_eq!(prune(&store, 2).await.unwrap(), 1);
        let left: Vec<_> = store.list(PREFIX).await.unwrap().into_iter().map(|a| a.key).collect();
        assert_eq!(
            left,
            [
                "control-plane/20261202T000000.000Z.tar.gz",
                "control-plane/20261203T000000.000Z.tar.gz"
            ]
        );
        assert_eq!(
            store.list("sources/").await.unwrap().len(),
            1,
            "other artefacts are kept"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_fingerprint_tells_keys_apart_without_showing_them() {
        let key = MasterKey::generate();
        let print = fingerprint(&key);
        assert!(print.starts_with("sha256:") && print.len() == 23, "{print}");
        assert!(!print.contains(&key.to_base64()));
        assert_ne!(print, fingerprint(&MasterKey::generate()));
    }
}
