//! The layout on disk and the primitives every write goes through: temp file, fsync, rename.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::body::Body;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::error::{ErrorCode, RegistryError, Result, io};
use crate::names::{Digest, Name};

/// Paths under the registry's root. Every path is built from checked names, tags and digests.
#[derive(Debug)]
pub(crate) struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Creates the root and its top-level folders (mode 0700) if missing.
    pub(crate) fn open(root: PathBuf) -> Result<Self> {
        let storage = Self { root };
        for dir in [
            storage.root.clone(),
            storage.blobs_dir(),
            storage.uploads_dir(),
            storage.repositories_dir(),
            storage.tmp_dir(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io("create", &dir))?;
        }
        // An existing root keeps no wider mode than ours: it holds every image.
        std::fs::set_permissions(&storage.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict the mode of", &storage.root))?;
        Ok(storage)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub(crate) fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    pub(crate) fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads_dir().join(id)
    }

    pub(crate) fn repositories_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `repositories/<name>/_manifests`; its existence is what makes a repository exist.
    pub(crate) fn manifests_dir(&self, name: &Name) -> PathBuf {
        self.repositories_dir().join(name.as_str()).join("_manifests")
    }

    pub(crate) fn tags_dir(&self, name: &Name) -> PathBuf {
        self.manifests_dir(name).join("tags")
    }

    pub(crate) fn tag_path(&self, name: &Name, tag: &str) -> PathBuf {
        self.tags_dir(name).join(tag)
    }

    pub(crate) fn revision_path(&self, name: &Name, digest: &Digest) -> PathBuf {
        self.manifests_dir(name)
            .join("revisions")
            .join("sha256")
            .join(digest.hex())
    }

    /// `repositories/<name>/_referrers/sha256/<subject hex>`: one file per referring manifest.
    pub(crate) fn referrers_dir(&self, name: &Name, subject: &Digest) -> PathBuf {
        self.repositories_dir()
            .join(name.as_str())
            .join("_referrers")
            .join("sha256")
            .join(subject.hex())
    }

    /// A fresh path under `tmp/`, on the same file system as everything it will be renamed to.
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.tmp_dir().join(random_id())
    }

    /// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
    /// part: temp file, fsync, rename.
    pub(crate) async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let temp = self.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(io("create", &temp))?;
            file.write_all(bytes).await.map_err(io("write", &temp))?;
            file.sync_all().await.map_err(io("sync", &temp))?;
            self.rename_into(&temp, path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Renames `from` to `to`, creating `to`'s parent folders first.
    pub(crate) async fn rename_into(&self, from: &Path, to: &Path) -> Result<()> {
        if let Some(parent) = to.parent() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .await
                .map_err(io("create", parent))?;
        }
        tokio::fs::rename(from, to).await.map_err(io("rename into place", to))
    }

    /// The size of a blob, or `None` if it is not stored.
    pub(crate) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Marks a blob as just used (its mtime), so that garbage collection leaves it alone for its
    /// grace period: called when a client is told a blob exists, as it may reference it next.
    /// Returns its size, or `None` if it is not stored. Call with the GC lock held for reading.
    pub(crate) async fn touch_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        let touched = tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("open", &path)(e)),
            };
            file.set_modified(SystemTime::now()).map_err(io("touch", &path))?;
            Ok(Some(file.metadata().map_err(io("read", &path))?.len()))
        })
        .await;
        touched.unwrap_or_else(|e| Err(panicked(e)))
    }
}

/// 128 random bits as 32 lowercase hex digits: upload ids and temp file names.
pub(crate) fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(crate) fn panicked(error: tokio::task::JoinError) -> RegistryError {
    RegistryError::Storage {
        action: "finish a blocking storage task on",
        path: PathBuf::from("<registry>"),
        source: io::Error::other(error.to_string()),
    }
}

/// Appends a request body to `file`, feeding `hasher`, refusing to go past `limit` bytes in all
/// (`already` are there). Returns the number of bytes written. Memory: one chunk at a time.
pub(crate) async fn append_body(
    file: &mut tokio::fs::File,
    path: &Path,
    body: Body,
    already: u64,
    limit: u64,
    mut hasher: Option<&mut Sha256>,
) -> Result<u64> {
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("the request body ended early ({e}); send the chunk again"),
            )
        })?;
        let len = chunk.len() as u64;
        if already + written + len > limit {
            return Err(too_large(limit));
        }
        file.write_all(&chunk).await.map_err(io("write", path))?;
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(&chunk);
        }
        written += len;
    }
    file.flush().await.map_err(io("write", path))?;
    Ok(written)
}

/// The names of the entries of `dir` (those that are UTF-8), unsorted; none if `dir` does not
/// exist.
pub(crate) async fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io("list", dir))? {
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Reads and drops up to 1 MiB of a body that is refused before it is read, so that a small
/// chunk does not break the connection under the client's feet (larger bodies are cut off).
pub(crate) async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while read < (1 << 20)
        && let Some(Ok(chunk)) = stream.next().await
    {
        read += chunk.len();
    }
}

pub(crate) fn too_large(limit: u64) -> RegistryError {
    RegistryError::with_status(
        ErrorCode::SizeInvalid,
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "a blob may be at most {} GiB in this registry; split the layer or use an external registry",
            limit >> 30
        ),
    )
}

/// Hashes a file from disk, a buffer at a time (when an upload's running hash was lost to a
/// restart).
pub(crate) async fn hash_file(path: &Path) -> Result<(Sha256, u64)> {
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(path).await.map_err(io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer).await.map_err(io("read", path))?;
        if read == 0 {
            return Ok((hasher, total));
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_with_413() {
        let dir = std::env::temp_dir().join(format!("enclii-registry-limit-{}", random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let mut file = tokio::fs::File::create(&path).await.unwrap();
        let mut hasher = Sha256::new();
        let err = append_body(&mut file, &path, Body::from(vec![0u8; 20]), 5, 16, Some(&mut hasher))
            .await
            .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(&err, RegistryError::Rejected { code: ErrorCode::SizeInvalid, status, .. }
                if *status == axum::http::StatusCode::PAYLOAD_TOO_LARGE),
            "{err:?}"
        );
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
