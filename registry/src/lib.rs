//! An embedded OCI distribution registry (spec v1.1, plus the Docker registry v2 behaviours
//! `docker push`/`pull` rely on), serving one directory for `enclii server` when no external
//! registry is configured. It is meant to be bound to loopback, behind HTTP Basic auth with
//! credentials Enclii generates.
//!
//! # Layout under the root (every folder mode 0700)
//! ```text
//! blobs/sha256/<hex>                                  blob contents, shared by all repositories
//! uploads/<id>/{data,info}                            upload sessions (id: 32 hex digits)
//! repositories/<name>/_manifests/tags/<tag>           "sha256:<hex>" of the tagged manifest
//! repositories/<name>/_manifests/revisions/sha256/<hex>  {"media_type", "subject"} of a manifest
//! repositories/<name>/_referrers/sha256/<subject>/<hex>  descriptor of a manifest with a subject
//! tmp/                                                temp files, renamed into place
//! ```
//! Manifest bodies are blobs too. Every write is a temp file, fsync and rename, so a crash never
//! leaves half a blob or manifest visible. Names, tags and digests are checked against the OCI
//! grammar before they become paths (no traversal); only `sha256` digests are accepted.
//!
//! # Implemented
//! `GET /v2/`; blobs: `HEAD`/`GET` (streamed, single `Range`), `DELETE` (only when no manifest
//! references the blob); uploads: monolithic (`POST ?digest=`), chunked (`POST`, `PATCH` with or
//! without `Content-Range`, `PUT ?digest=`), status (`GET`), cancel (`DELETE`), cross-repository
//! mount (`POST ?mount=&from=`; blobs are global, so any stored blob mounts); manifests: `PUT`,
//! `GET`, `HEAD`, `DELETE` by tag or digest (OCI image manifest and index, Docker schema 2
//! manifest and list), with references checked (`MANIFEST_BLOB_UNKNOWN`) and `subject` indexed;
//! `GET /tags/list` (`n`, `last`, `Link`); `GET /referrers/<digest>` (`artifactType` filter).
//! Limits: [`MAX_BLOB_BYTES`] per blob, [`MAX_MANIFEST_BYTES`] per manifest; request bodies are
//! streamed, so memory stays bounded. [`Registry::collect_garbage`] is mark and sweep.
//!
//! # Not implemented
//! Token auth and per-repository permissions (one user may do everything); catalog
//! (`/v2/_catalog`); digests other than sha256; Docker schema 1; resumable uploads across a
//! restart keep their bytes but re-hash them from disk at the end; untagged manifests are kept
//! until deleted (GC removes blobs, not manifests); pull-through caching; TLS (bind to loopback).

mod error;
mod gc;
mod manifests;
mod names;
mod referrers;
mod routes;
mod storage;
mod uploads;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

pub use error::{ErrorCode, RegistryError};
pub use gc::{GRACE as GC_GRACE, GcReport};

use names::{Digest, Name, Reference};
use storage::Storage;

/// The largest blob (layer) one upload may create: 10 GiB.
pub const MAX_BLOB_BYTES: u64 = 10 << 30;
/// The largest manifest accepted, as in Docker's registry: 4 MiB.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The one user of the registry. `Debug` does not print the password; [`Credentials::matches`]
/// compares in constant time.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// `username` with a fresh random password (128 bits, hex).
    pub fn generate(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: storage::random_id(),
        }
    }

    /// Whether the pair is this one; the time taken does not depend on where they differ.
    pub fn matches(&self, username: &str, password: &str) -> bool {
        let user = Sha256::digest(username.as_bytes()).ct_eq(&Sha256::digest(self.username.as_bytes()));
        let pass = Sha256::digest(password.as_bytes()).ct_eq(&Sha256::digest(self.password.as_bytes()));
        (user & pass).into()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry: its storage and credentials. Cheap to clone (shared).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) storage: Storage,
    pub(crate) credentials: Credentials,
    pub(crate) uploads: uploads::Sessions,
    /// Read by everything that makes a blob referenced or fresh; written by the sweep per blob.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root())
            .field("credentials", &self.inner.credentials)
            .finish()
    }
}

impl Registry {
    /// Opens (creating if needed, mode 0700) the registry stored under `root`.
    pub fn open(root: PathBuf, credentials: Credentials) -> Result<Registry, RegistryError> {
        Ok(Self {
            inner: Arc::new(Inner {
                storage: Storage::open(root)?,
                credentials,
                uploads: uploads::Sessions::default(),
                gc_lock: tokio::sync::RwLock::new(()),
            }),
        })
    }

    /// The folder the registry stores everything in.
    pub fn root(&self) -> &Path {
        self.inner.storage.root()
    }

    /// The HTTP API under `/v2/` (mount at the root of a listener: clients expect `/v2/`).
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// Deletes manifest `digest` (`sha256:<hex>`) from repository `name`, with the tags pointing
    /// at it; its blobs go at the next [`Registry::collect_garbage`] if nothing else uses them.
    pub async fn delete_manifest(&self, name: &str, digest: &str) -> Result<(), RegistryError> {
        let name = Name::parse(name)?;
        let reference = Reference::Digest(Digest::parse(digest)?);
        manifests::delete(&self.inner, &name, &reference).await
    }

    /// Deletes image `digest` of repository `name` and what the pipeline attached to it by the
    /// cosign tag scheme (`sha256-<hex>.sig`, `.sbom`, `.att`): pruning a release's image. What is
    /// already gone is not an error; the blobs go at the next [`Registry::collect_garbage`].
    pub async fn delete_image(&self, name: &str, digest: &str) -> Result<(), RegistryError> {
        let name = Name::parse(name)?;
        let image = Digest::parse(digest)?;
        let gone = |e: &RegistryError| e.code() == Some(ErrorCode::ManifestUnknown);
        for suffix in ["sig", "sbom", "att"] {
            let tag = Reference::parse(&format!("{}.{suffix}", digest.replace(':', "-")))?;
            match manifests::find(&self.inner, &name, &tag).await {
                Ok(found) => match manifests::delete(&self.inner, &name, &Reference::Digest(found.digest)).await {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                },
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match manifests::delete(&self.inner, &name, &Reference::Digest(image)).await {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes blobs no manifest of any repository references and upload sessions idle for more
    /// than [`GC_GRACE`]; blobs written or used within that hour are kept, so a push running
    /// meanwhile is safe.
    pub async fn collect_garbage(&self) -> Result<GcReport, RegistryError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || gc::collect(&inner))
            .await
            .unwrap_or_else(|e| Err(storage::panicked(e)))
    }
}
