//! `enclii server restore --from <backup>`: fetches a snapshot (a file, a key of the artefact
//! store, or the newest one there), checks every file against its manifest in a working
//! directory, checks that the server will open its secrets with the key they were sealed with,
//! and only then renames the files into the data directory — the database last, so a data
//! directory holding `enclii.db` was restored whole. With `--database-url` it restores a
//! PostgreSQL database from a `pg_dump` file instead (`postgres.rs`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use enclii_artefacts::{ArtefactConfig, ArtefactStore};
use enclii_store::MasterKey;

use super::archive::{self, Manifest};
use super::{DATABASE, MASTER_KEY, PREFIX, WorkDir, fingerprint, postgres, size, snapshot_files};
use crate::server::{ServerArgs, announce};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: a snapshot file, a key of the artefact store (`control-plane/<time>.tar.gz`,
    /// or its `s3://` / `file://` URI), `latest` (the newest in the store), or, with
    /// --database-url, a `pg_dump` file (custom format or plain SQL).
    #[arg(long)]
    from: String,
    /// Replace what the data directory (or the PostgreSQL database) already holds. Replaced
    /// files are moved to `<data-dir>/replaced-<time>/`. Stop every server using it first.
    #[arg(long)]
    force: bool,
}

/// Where the backup is.
enum Origin {
    File(PathBuf),
    Stored(String),
    Latest,
}

fn origin(from: &str, artefacts: &ArtefactConfig) -> anyhow::Result<Origin> {
    if from == "latest" {
        return Ok(Origin::Latest);
    }
    if let Some(rest) = from.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        return match artefacts {
            ArtefactConfig::S3(s3) if s3.bucket == bucket => Ok(Origin::Stored(key.to_string())),
            ArtefactConfig::S3(s3) => bail!(
                "--from {from} is in the bucket {bucket}, but ENCLII_S3_BUCKET is {}: set the ENCLII_S3_* variables to that bucket's",
                s3.bucket
            ),
            ArtefactConfig::Directory(_) => {
                bail!(
                    "--from {from} is in S3, but no bucket is configured: set ENCLII_S3_BUCKET and the other ENCLII_S3_* variables"
                )
            }
        };
    }
    if let Some(path) = from.strip_prefix("file://") {
        return Ok(Origin::File(PathBuf::from(path)));
    }
    if Path::new(from).exists() {
        return Ok(Origin::File(PathBuf::from(from)));
    }
    if from.starts_with(PREFIX) {
        return Ok(Origin::Stored(from.to_string()));
    }
    bail!(
        "--from {from}: no such file, and not a backup in the artefact store (`{PREFIX}<time>.tar.gz`, an s3:// URI, or `latest`)"
    )
}

/// The backup as a local file (downloaded into `work` when it is in the store), and how to name
/// it in messages.
async fn fetch(origin: Origin, artefacts: &ArtefactConfig, work: &Path) -> anyhow::Result<(PathBuf, String)> {
    let key = match origin {
        Origin::File(path) => {
            if !path.is_file() {
                bail!("--from {}: no such file", path.display());
            }
            let name = path.display().to_string();
            return Ok((path, name));
        }
        Origin::Stored(key) => key,
        Origin::Latest => {
            let store = ArtefactStore::connect(artefacts).await?;
            let newest = store
                .list(PREFIX)
                .await?
                .into_iter()
                .map(|a| a.key)
                .filter(|k| k.ends_with(".tar.gz"))
                .max();
            newest.with_context(|| {
                format!(
                    "no control-plane backup in {}/{PREFIX}: check the ENCLII_S3_* settings, or give --from a file",
                    artefacts.describe()
                )
            })?
        }
    };
    let store = ArtefactStore::connect(artefacts).await?;
    let mut reader = store.get_stream(&key).await?;
    let path = work.join("download.tar.gz");
    let mut file = tokio::fs::File::create(&path).await?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .with_context(|| format!("cannot download {}", store.uri(&key)))?;
    Ok((path, store.uri(&key)))
}

pub async fn restore(args: &ServerArgs, restore: &RestoreArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir()?.to_path_buf();
    let artefacts = args.build.artefacts(&data_dir);
    let origin = origin(&restore.from, &artefacts)?;
    if let (Some(url), Origin::File(path)) = (&args.database_url, &origin)
        && !postgres::is_snapshot(path)?
    {
        return postgres::restore(url, path, restore.force).await;
    }
    // Checked before anything is fetched; `move_into_place` checks every file again.
    if args.database_url.is_none() && data_dir.join(DATABASE).exists() && !restore.force {
        bail!(
            "{} already holds a database: stop the server and pass --force to replace it (what is replaced is kept in {}), or restore into an empty --data-dir",
            data_dir.display(),
            data_dir.join("replaced-<time>").display()
        );
    }
    let work = WorkDir::create(&data_dir, "restore")?;
    let (archive, what) = fetch(origin, &artefacts, &work.0).await?;
    let staging = work.0.join("files");
    std::fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let manifest = {
        let (staging, what) = (staging.clone(), what.clone());
        tokio::task::spawn_blocking(move || archive::unpack_verified(&archive, &staging, &snapshot_files(), &what))
            .await
            .context("checking the backup stopped")??
    };
    match (&args.database_url, manifest.holds(DATABASE)) {
        (Some(_), true) => bail!(
            "{what} holds an SQLite database, but --database-url is set: restore it without --database-url (ENCLII_DATABASE_URL), or restore PostgreSQL from a pg_dump file"
        ),
        (None, false) => bail!(
            "{what} holds no database (it was taken from a server on PostgreSQL): restore the database with pg_restore, and its keys with --database-url set"
        ),
        _ => {}
    }
    check_key(args, &manifest, &staging, &data_dir, &what)?;
    let replaced = move_into_place(&manifest, &staging, &data_dir, restore.force)?;

    announce(&format!(
        "restored {} from {what} (taken {} by enclii {}): {} ({})",
        data_dir.display(),
        manifest.created_at,
        manifest.enclii_version,
        manifest
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        size(manifest.size()),
    ));
    if let Some(replaced) = replaced {
        announce(&format!("what it replaced is in {}", replaced.display()));
    }
    Ok(())
}

/// Refuses a restore whose secrets the server could not open: the key it will use (given by
/// `ENCLII_MASTER_KEY`, else the snapshot's `master.key`, else the one in the data directory)
/// must be the one they were sealed with.
fn check_key(
    args: &ServerArgs,
    manifest: &Manifest,
    staging: &Path,
    data_dir: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let Some(expected) = &manifest.master_key_fingerprint else {
        return Ok(());
    };
    let read = |path: &Path| -> anyhow::Result<MasterKey> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        MasterKey::from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let (key, whence) = if let Some(text) = &args.master_key {
        let key = MasterKey::from_base64(text).map_err(|e| anyhow::anyhow!("ENCLII_MASTER_KEY: {e}"))?;
        (key, "ENCLII_MASTER_KEY".to_string())
    } else if manifest.holds(MASTER_KEY) {
        (read(&staging.join(MASTER_KEY))?, format!("the master.key in {what}"))
    } else if data_dir.join(MASTER_KEY).exists() {
        let path = data_dir.join(MASTER_KEY);
        (read(&path)?, path.display().to_string())
    } else {
        bail!(
            "{what} holds no master key (taken --without-master-key, or while ENCLII_MASTER_KEY was set): set ENCLII_MASTER_KEY to the key its secrets are sealed with ({expected}) and restore again"
        );
    };
    let actual = fingerprint(&key);
    if actual != *expected {
        bail!(
            "the secrets in {what} are sealed with the master key {expected}, but the server would open them with {whence} ({actual}): set ENCLII_MASTER_KEY to the key of the backup (or unset it to use the backup's own master.key)"
        );
    }
    Ok(())
}

/// Renames the checked files into the data directory, the database last. With `force`, files
/// they replace (and the old database's `-wal` and `-shm`, which SQLite would otherwise replay
/// into the restored one) are first moved to `replaced-<time>/`, whose path is returned.
fn move_into_place(
    manifest: &Manifest,
    staging: &Path,
    data_dir: &Path,
    force: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let mut displaced: Vec<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
    if manifest.holds(DATABASE) {
        displaced.extend([format!("{DATABASE}-wal"), format!("{DATABASE}-shm")]);
    }
    displaced.retain(|name| data_dir.join(name).exists());
    let mut replaced = None;
    if !displaced.is_empty() {
        if !force {
            bail!(
                "{} already holds {}: stop the server and pass --force to replace them, or restore into an empty --data-dir",
                data_dir.display(),
                displaced.join(", ")
            );
        }
        let aside = data_dir.join(format!("replaced-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&aside)
            .with_context(|| format!("cannot create {}", aside.display()))?;
        for name in &displaced {
            std::fs::rename(data_dir.join(name), aside.join(name))
                .with_context(|| format!("cannot move {} aside", data_dir.join(name).display()))?;
        }
        replaced = Some(aside);
    }
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_by_key(|name| *name == DATABASE);
    for name in names {
        std::fs::rename(staging.join(name), data_dir.join(name))
            .with_context(|| format!("cannot move {name} into {}", data_dir.display()))?;
    }
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {}", data_dir.display()))?;
    Ok(replaced)
}
