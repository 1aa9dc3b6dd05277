//! The artefact store: source archives, archived job logs, SBOMs and backups, by key
//! (`sources/…`, `logs/…`, `sboms/…`, `backups/…`). Two backends behind one interface:
//! - an S3-compatible bucket, for several hosts sharing one store;
//! - a directory (`<data-dir>/artefacts`), the one-node default when no bucket is configured.
//!
//! Keys are relative paths made by the build steps from validated slugs and numbers; the
//! directory backend still refuses any key that could leave its root.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

use crate::{ArtefactError, S3Config};

/// Where artefacts are kept (`ENCLII_S3_BUCKET`, or the data directory without it).
#[derive(Clone, Debug)]
pub enum ArtefactConfig {
    S3(S3Config),
    Directory(PathBuf),
}

impl ArtefactConfig {
    /// One line for the startup summary (no credentials).
    pub fn describe(&self) -> String {
        match self {
            ArtefactConfig::S3(s3) => format!("S3 bucket {} at {}", s3.bucket, s3.endpoint.as_deref().unwrap_or("AWS")),
            ArtefactConfig::Directory(root) => format!("directory {}", root.display()),
        }
    }
}

#[derive(Clone)]
pub enum ArtefactStore {
    S3 { client: Client, bucket: String },
    Directory { root: PathBuf },
}

/// One stored artefact, as a listing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredArtefact {
    pub key: String,
    pub modified: SystemTime,
}

pub(crate) fn s3_error(what: &str, key: &str, e: impl std::fmt::Display) -> ArtefactError {
    // aws-sdk errors print as "service error"; the source chain holds the cause.
    ArtefactError::Unavailable(format!(
        "artefact store: {what} `{key}` failed: {e}; check ENCLII_S3_* settings and that the S3 server is up"
    ))
}

pub(crate) fn dir_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ArtefactError {
    ArtefactError::Unavailable(format!(
        "artefact store: {what} {} failed: {e}; check that the data directory is writable and not full",
        path.display()
    ))
}

/// The path of `key` under `root`, or an error when the key is not a plain relative path.
pub(crate) fn contained(root: &Path, key: &str) -> Result<PathBuf, ArtefactError> {
    let relative = Path::new(key);
    let plain = !key.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(ArtefactError::BadKey(format!(
            "artefact store: the key `{key}` is not a relative path of plain names"
        )));
    }
    Ok(root.join(relative))
}

impl ArtefactStore {
    /// Opens the store: creates the bucket or the directory when it does not exist yet.
    pub async fn connect(config: &ArtefactConfig) -> Result<Self, ArtefactError> {
        match config {
            ArtefactConfig::S3(s3) => Self::connect_s3(s3).await,
            ArtefactConfig::Directory(root) => {
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|e| dir_error("creating", root, e))?;
                Ok(ArtefactStore::Directory { root: root.clone() })
            }
        }
    }

    async fn connect_s3(config: &S3Config) -> Result<Self, ArtefactError> {
        let credentials = Credentials::new(&config.access_key, config.secret_key.expose(), None, None, "enclii");
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(builder.build());
        let bucket = config.bucket.clone();
        if client.head_bucket().bucket(&bucket).send().await.is_err() {
            client
                .create_bucket()
                .bucket(&bucket)
                .send()
                .await
                .map_err(|e| s3_error("create bucket", &bucket, aws_sdk_s3::error::DisplayErrorContext(e)))?;
        }
        Ok(ArtefactStore::S3 { client, bucket })
    }

    /// Stores `body` under `key`; returns its URI (`s3://bucket/key` or `file:///…/key`).
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<String, ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| s3_error("upload of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
            }
            ArtefactStore::Directory { root } => {
                let path = contained(root, key)?;
                let parent = path.parent().unwrap_or(root);
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| dir_error("creating", parent, e))?;
                // Written aside, then renamed: a reader never sees half an artefact.
                let partial = path.with_extension(format!("partial-{}", rand::random::<u64>()));
                tokio::fs::write(&partial, body)
                    .await
                    .map_err(|e| dir_error("writing", &partial, e))?;
                if let Err(e) = tokio::fs::rename(&partial, &path).await {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(dir_error("storing", &path, e));
                }
            }
        }
        Ok(self.uri(key))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                let object = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_error("download of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| s3_error("download of", key, e))?;
                Ok(bytes.into_bytes().to_vec())
            }
            ArtefactStore::Directory { root } => {
                let path = contained(root, key)?;
                tokio::fs::read(&path).await.map_err(|e| dir_error("reading", &path, e))
            }
        }
    }

    /// Removes `key`; a key that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_error("deletion of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
            }
            ArtefactStore::Directory { root } => {
                let path = contained(root, key)?;
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(dir_error("deleting", &path, e)),
                }
            }
        }
        Ok(())
    }

    /// Every artefact whose key starts with `prefix` (a folder such as `logs/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredArtefact>, ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                let mut found = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page =
                        page.map_err(|e| s3_error("listing of", prefix, aws_sdk_s3::error::DisplayErrorContext(e)))?;
                    for object in page.contents() {
                        let (Some(key), Some(modified)) = (object.key(), object.last_modified()) else {
                            continue;
                        };
                        let modified = SystemTime::try_from(*modified).unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push(StoredArtefact {
                            key: key.to_string(),
                            modified,
                        });
                    }
                }
                Ok(found)
            }
            ArtefactStore::Directory { root } => {
                let start = contained(root, prefix.trim_end_matches('/'))?;
                let root = root.clone();
                tokio::task::spawn_blocking(move || list_directory(&root, &start))
                    .await
                    .map_err(|e| ArtefactError::Unavailable(format!("artefact store: listing stopped: {e}")))?
            }
        }
    }

    /// Deletes the artefacts under each prefix last written before `now - retention`; returns
    /// how many went. Per-key failures are logged and skipped (the next pass retries them).
    pub async fn prune(&self, prefixes: &[&str], retention: Duration) -> Result<usize, ArtefactError> {
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut deleted = 0;
        for prefix in prefixes {
            for artefact in self.list(prefix).await? {
                if artefact.modified >= cutoff {
                    continue;
                }
                match self.delete(&artefact.key).await {
                    Ok(()) => deleted += 1,
                    Err(e) => tracing::warn!(key = %artefact.key, error = %e, "could not prune an artefact"),
                }
            }
        }
        Ok(deleted)
    }

    pub fn uri(&self, key: &str) -> String {
        match self {
            ArtefactStore::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
            ArtefactStore::Directory { root } => format!("file://{}", root.join(key).display()),
        }
    }
}

/// Files under `start`, keyed relative to `root` with `/` separators; half-written files
/// (`*.partial-*`) are not artefacts. A missing `start` is an empty listing.
fn list_directory(root: &Path, start: &Path) -> Result<Vec<StoredArtefact>, ArtefactError> {
    let mut found = Vec::new();
    let mut pending = vec![start.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(dir_error("listing", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| dir_error("listing", &dir, e))?;
            let kind = entry.file_type().map_err(|e| dir_error("listing", &entry.path(), e))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let partial = path
                .extension()
                .is_some_and(|e| e.to_string_lossy().starts_with("partial-"));
            if !kind.is_file() || partial {
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let key = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| dir_error("reading the time of", &path, e))?;
            found.push(StoredArtefact { key, modified });
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root() -> PathBuf {
        std::env::temp_dir().join(format!("enclii_artefacts_test_{}", rand::random::<u64>()))
    }

    #[tokio::test]
    async fn the_directory_store_keeps_lists_and_deletes_by_key() {
        let root = temp_root();
        let store = ArtefactStore::connect(&ArtefactConfig::Directory(root.clone()))
            .await
            .unwrap();
        let uri = store
            .put("logs/shop/7/build.log", b"line".to_vec(), "text/plain")
            .await
            .unwrap();
        assert_eq!(uri, format!("file://{}", root.join("logs/shop/7/build.log").display()));
        store
            .put("sources/shop/api/7-abc.tar.gz", vec![1, 2], "application/gzip")
            .await
            .unwrap();
        assert_eq!(store.get("logs/shop/7/build.log").await.unwrap(), b"line");
        let keys: Vec<_> = store.list("logs/").await.unwrap().into_iter().map(|a| a.key).collect();
        assert_eq!(keys, ["logs/shop/7/build.log"]);
        assert!(
            store.list("sboms/").await.unwrap().is_empty(),
            "a missing folder lists nothing"
        );
        // Nothing is older than an hour; everything is older than "now".
        assert_eq!(
            store
                .prune(&["logs/", "sources/"], Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.prune(&["logs/"], Duration::ZERO).await.unwrap(), 1);
        assert!(store.get("logs/shop/7/build.log").await.is_err());
        assert_eq!(store.list("sources/").await.unwrap().len(), 1, "other folders are kept");
        store
            .delete("logs/shop/7/build.log")
            .await
            .expect("deleting twice is fine");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn the_directory_store_refuses_keys_that_leave_its_root() {
        let root = temp_root();
        let store = ArtefactStore::connect(&ArtefactConfig::Directory(root.clone()))
            .await
            .unwrap();
        for key in ["../escape", "/etc/passwd", "logs/../../x", ""] {
            let e = store.put(key, vec![], "text/plain").await.unwrap_err();
            assert!(e.to_string().contains("not a relative path"), "{key}: {e}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
