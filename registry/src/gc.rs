//! Mark and sweep: blobs referenced by no manifest revision of any repository are removed, as
//! are upload sessions and temp files idle for longer than the grace period.
//!
//! Safe against concurrent pushes: a blob is swept only if it was last written or *touched*
//! before `start - GRACE`. Uploads, existence checks (HEAD, mounts) and manifest PUTs touch the
//! blobs they name while holding the GC lock for reading; the sweep holds it for writing while
//! it looks at and removes one blob. So a blob a client was just told exists, or that a manifest
//! being stored references, is never swept.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{ErrorCode, RegistryError, Result, io};
use crate::names::{Digest, is_hex};
use crate::storage::Storage;
use crate::{Inner, MAX_MANIFEST_BYTES, manifests};

/// How long a blob, upload session or temp file is left alone after its last use.
pub const GRACE: Duration = Duration::from_secs(3600);

/// What one garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs no manifest references, removed.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Blobs kept: referenced, or used within the grace period.
    pub blobs_kept: u64,
    /// Upload sessions idle for longer than the grace period, removed.
    pub uploads_removed: u64,
}

/// Runs one collection (blocking file I/O: call from `spawn_blocking`).
pub(crate) fn collect(inner: &Inner) -> Result<GcReport> {
    let cutoff = SystemTime::now() - GRACE;
    let marked = mark(&inner.storage)?;
    let mut report = GcReport::default();
    for entry in entries(&inner.storage.blobs_dir())? {
        let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
            continue;
        };
        if marked.contains(&digest) {
            report.blobs_kept += 1;
            continue;
        }
        let path = entry.path();
        let _sweep = inner.gc_lock.blocking_write();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &path)(e)),
        };
        if meta.modified().map_err(io("read", &path))? >= cutoff {
            report.blobs_kept += 1;
            continue;
        }
        remove_file(&path)?;
        report.blobs_removed += 1;
        report.bytes_freed += meta.len();
    }
    for entry in entries(&inner.storage.uploads_dir())? {
        let Some(id) = entry
            .file_name()
            .to_str()
            .filter(|id| is_hex(id, 32))
            .map(str::to_owned)
        else {
            continue;
        };
        let Some(_claimed) = inner.uploads.claim_idle(&id) else {
            continue;
        };
        let dir = entry.path();
        let last_used = std::fs::metadata(dir.join("data"))
            .or_else(|_| std::fs::metadata(&dir))
            .and_then(|meta| meta.modified());
        if last_used.is_ok_and(|time| time < cutoff) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.uploads_removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &dir)(e)),
            }
            inner.uploads.forget(&id);
        }
    }
    // Temp files of writes that a crash interrupted.
    for entry in entries(&inner.storage.tmp_dir())? {
        let path = entry.path();
        if std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .is_ok_and(|time| time < cutoff)
        {
            remove_file(&path)?;
        }
    }
    tracing::info!(
        removed = report.blobs_removed,
        bytes = report.bytes_freed,
        kept = report.blobs_kept,
        uploads = report.uploads_removed,
        "registry garbage collection"
    );
    Ok(report)
}

/// Removes one blob that no manifest references (DELETE on a blob). Blocking.
pub(crate) fn delete_blob(inner: &Inner, digest: &Digest) -> Result<()> {
    let path = inner.storage.blob_path(digest);
    if !path.exists() {
        return Err(RegistryError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in this registry"),
        ));
    }
    // Held across the mark: no manifest naming the blob can be stored before it is removed.
    let _sweep = inner.gc_lock.blocking_write();
    if mark(&inner.storage)?.contains(digest) {
        return Err(RegistryError::new(
            ErrorCode::Denied,
            format!(
                "blob {digest} is still referenced by a manifest (blobs are shared by all repositories); \
                 delete the manifests that use it, then it is removed by garbage collection"
            ),
        ));
    }
    remove_file(&path)
}

/// Every blob some manifest revision of some repository references, and the manifests themselves.
fn mark(storage: &Storage) -> Result<HashSet<Digest>> {
    let mut marked = HashSet::new();
    let mut folders = vec![storage.repositories_dir()];
    while let Some(folder) = folders.pop() {
        for entry in entries(&folder)? {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let file_name = entry.file_name();
            let name = file_name.to_string_lossy();
            if name == "_manifests" {
                mark_revisions(storage, &entry.path().join("revisions").join("sha256"), &mut marked)?;
            } else if !name.starts_with('_') {
                // A name component: repositories nest (`project/service`).
                folders.push(entry.path());
            }
        }
    }
    Ok(marked)
}

fn mark_revisions(storage: &Storage, revisions: &Path, marked: &mut HashSet<Digest>) -> Result<()> {
    for entry in entries(revisions)? {
        let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
            continue;
        };
        let body_path = storage.blob_path(&digest);
        match std::fs::metadata(&body_path) {
            Ok(meta) if meta.len() <= MAX_MANIFEST_BYTES as u64 => {
                let body = std::fs::read(&body_path).map_err(io("read", &body_path))?;
                marked.extend(manifests::references(&body));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &body_path)(e)),
        }
        marked.insert(digest);
    }
    Ok(())
}

/// The entries of a folder; none if it does not exist (any more).
fn entries(folder: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(folder) {
        Ok(entries) => entries.collect::<io::Result<Vec<_>>>().map_err(io("list", folder)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("list", folder)(e)),
    }
}

fn remove_file(path: &PathBuf) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}
