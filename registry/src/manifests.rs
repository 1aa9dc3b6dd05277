//! Manifests: the body is stored as a blob; a repository holds revisions
//! (`_manifests/revisions/sha256/<hex>`: its media type and subject) and tags
//! (`_manifests/tags/<tag>`: a digest).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{ErrorCode, RegistryError, Result, io};
use crate::names::{Digest, Name, Reference};
use crate::storage::file_names;
use crate::{Inner, MAX_MANIFEST_BYTES, referrers};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const SUPPORTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The parts of a manifest or index the registry reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
    /// A non-distributable ("foreign") layer lives elsewhere; its blob is not required here.
    urls: Option<Vec<String>>,
}

/// What a repository records of one manifest.
#[derive(Serialize, Deserialize)]
struct Revision {
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

/// A manifest as found: where its body is and how to describe it.
pub(crate) struct Found {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
}

/// A manifest as stored by [`put`].
pub(crate) struct Stored {
    pub(crate) digest: Digest,
    pub(crate) subject: Option<Digest>,
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::ManifestInvalid, message)
}

fn unknown(name: &Name, reference: &Reference) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in repository {name}; push it first, or check the tag or digest"),
    )
}

/// Reads a manifest body, refusing more than [`MAX_MANIFEST_BYTES`] before holding more.
async fn read_limited(body: Body) -> Result<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| invalid(format!("the request body ended early ({e}); send the manifest again")))?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::with_status(
                ErrorCode::ManifestInvalid,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a manifest may be at most {} MiB; put large data in a layer blob",
                    MAX_MANIFEST_BYTES >> 20
                ),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Stores a manifest pushed to `name:reference` (PUT).
pub(crate) async fn put(
    inner: &Inner,
    name: &Name,
    reference: &Reference,
    content_type: Option<&str>,
    body: Body,
) -> Result<Stored> {
    let bytes = read_limited(body).await?;
    let digest = Digest::from_sha256(&Sha256::digest(&bytes));
    if let Reference::Digest(expected) = reference
        && *expected != digest
    {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!(
                "the manifest's content has digest {digest}, not {expected} as in the URL; push it by tag or by its own digest"
            ),
        ));
    }
    let document: Document = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the manifest is not a JSON manifest or index: {e}")))?;
    let media_type = media_type_of(content_type, &document)?;
    if document.schema_version != Some(2) {
        return Err(invalid("the manifest must have \"schemaVersion\": 2"));
    }
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    let config = document.config.as_ref();
    if is_index && document.manifests.is_none() {
        return Err(invalid(format!("an index ({media_type}) must list \"manifests\"")));
    }
    if !is_index && config.is_none() {
        return Err(invalid(format!(
            "an image manifest ({media_type}) must have a \"config\""
        )));
    }
    let subject = document
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;

    // Under the GC lock: what is checked here cannot be swept before the revision is written.
    let _gc = inner.gc_lock.read().await;
    for layer in config.into_iter().chain(document.layers.iter().flatten()) {
        let blob = descriptor_digest(layer, "config or layer")?;
        if layer.urls.as_ref().is_some_and(|urls| !urls.is_empty()) {
            continue;
        }
        if inner.storage.touch_blob(&blob).await?.is_none() {
            return Err(blob_unknown(name, &blob, "blob"));
        }
    }
    for child in document.manifests.iter().flatten() {
        let child = descriptor_digest(child, "manifests")?;
        let exists = tokio::fs::try_exists(inner.storage.revision_path(name, &child))
            .await
            .map_err(io("read", &inner.storage.revision_path(name, &child)))?;
        if !exists || inner.storage.touch_blob(&child).await?.is_none() {
            return Err(blob_unknown(name, &child, "manifest"));
        }
    }

    if inner.storage.touch_blob(&digest).await?.is_none() {
        inner
            .storage
            .write_atomic(&inner.storage.blob_path(&digest), &bytes)
            .await?;
    }
    let revision = Revision {
        media_type: media_type.clone(),
        subject: subject.as_ref().map(ToString::to_string),
    };
    let revision = serde_json::to_vec(&revision).unwrap_or_default();
    inner
        .storage
        .write_atomic(&inner.storage.revision_path(name, &digest), &revision)
        .await?;
    if let Some(subject) = &subject {
        let artifact_type = document
            .artifact_type
            .clone()
            .or_else(|| (!is_index).then(|| config.map(|c| c.media_type.clone())).flatten());
        let descriptor = serde_json::json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
            "artifactType": artifact_type,
            "annotations": document.annotations,
        });
        referrers::add(inner, name, subject, &digest, descriptor).await?;
    }
    if let Reference::Tag(tag) = reference {
        inner
            .storage
            .write_atomic(&inner.storage.tag_path(name, tag), digest.to_string().as_bytes())
            .await?;
    }
    Ok(Stored { digest, subject })
}

fn blob_unknown(name: &Name, digest: &Digest, what: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestBlobUnknown,
        format!("the manifest references {what} {digest}, which repository {name} does not have; push it first"),
    )
}

fn descriptor_digest(descriptor: &Descriptor, field: &str) -> Result<Digest> {
    if descriptor.size < 0 {
        return Err(invalid(format!("a {field} descriptor has a negative size")));
    }
    Digest::parse(&descriptor.digest).map_err(|e| invalid(format!("a {field} descriptor: {e}")))
}

/// The media type: the Content-Type header's, or else the body's `mediaType`; the two must agree.
fn media_type_of(content_type: Option<&str>, document: &Document) -> Result<String> {
    let header = content_type
        .map(|value| value.split(';').next().unwrap_or_default().trim())
        .filter(|value| !value.is_empty() && *value != "application/octet-stream");
    let media_type = match (header, document.media_type.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid(format!(
                "the Content-Type {header} does not match the manifest's mediaType {body}"
            )));
        }
        (Some(media_type), _) | (None, Some(media_type)) => media_type.to_owned(),
        (None, None) => {
            return Err(invalid(
                "send the manifest's media type as Content-Type (or in its \"mediaType\" field)",
            ));
        }
    };
    if media_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(invalid(
            "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)",
        ));
    }
    if !SUPPORTED.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type}; supported: {}",
            SUPPORTED.join(", ")
        )));
    }
    Ok(media_type)
}

/// Resolves `name:reference` to the stored manifest.
pub(crate) async fn find(inner: &Inner, name: &Name, reference: &Reference) -> Result<Found> {
    let digest = match reference {
        Reference::Digest(digest) => digest.clone(),
        Reference::Tag(tag) => {
            let path = inner.storage.tag_path(name, tag);
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => Digest::parse(text.trim()).map_err(|_| unknown(name, reference))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unknown(name, reference)),
                Err(e) => return Err(io("read", &path)(e)),
            }
        }
    };
    let revision = read_revision(inner, name, &digest)
        .await?
        .ok_or_else(|| unknown(name, reference))?;
    let size = inner
        .storage
        .blob_size(&digest)
        .await?
        .ok_or_else(|| unknown(name, reference))?;
    Ok(Found {
        path: inner.storage.blob_path(&digest),
        digest,
        media_type: revision.media_type,
        size,
    })
}

async fn read_revision(inner: &Inner, name: &Name, digest: &Digest) -> Result<Option<Revision>> {
    let path = inner.storage.revision_path(name, digest);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Deletes by digest (the revision, every tag pointing at it, its referrer entry) or by tag (the
/// tag only). The blobs stay until garbage collection.
pub(crate) async fn delete(inner: &Inner, name: &Name, reference: &Reference) -> Result<()> {
    match reference {
        Reference::Tag(tag) => {
            let path = inner.storage.tag_path(name, tag);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(unknown(name, reference)),
                Err(e) => Err(io("remove", &path)(e)),
            }
        }
        Reference::Digest(digest) => {
            let revision = read_revision(inner, name, digest)
                .await?
                .ok_or_else(|| unknown(name, reference))?;
            // Tags first, the revision last: a crash in between leaves a deletable revision.
            for tag in list_tags(inner, name).await? {
                let path = inner.storage.tag_path(name, &tag);
                if let Ok(text) = tokio::fs::read_to_string(&path).await
                    && text.trim() == digest.to_string()
                {
                    remove_if_present(&path).await?;
                }
            }
            if let Some(subject) = revision.subject.as_deref().and_then(|s| Digest::parse(s).ok()) {
                referrers::remove(inner, name, &subject, digest).await?;
            }
            remove_if_present(&inner.storage.revision_path(name, digest)).await
        }
    }
}

async fn remove_if_present(path: &std::path::Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Every tag of a repository, sorted; NAME_UNKNOWN if nothing was ever pushed to it.
pub(crate) async fn list_tags(inner: &Inner, name: &Name) -> Result<Vec<String>> {
    let manifests = inner.storage.manifests_dir(name);
    if !tokio::fs::try_exists(&manifests)
        .await
        .map_err(io("read", &manifests))?
    {
        return Err(RegistryError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} is not known to this registry; push an image to it first"),
        ));
    }
    let mut tags = file_names(&inner.storage.tags_dir(name)).await?;
    tags.sort();
    Ok(tags)
}

/// The blobs a stored manifest body references (config, layers, child manifests), for GC.
pub(crate) fn references(body: &[u8]) -> Vec<Digest> {
    let Ok(document) = serde_json::from_slice::<Document>(body) else {
        return Vec::new();
    };
    document
        .config
        .iter()
        .chain(document.layers.iter().flatten())
        .chain(document.manifests.iter().flatten())
        .filter_map(|d| Digest::parse(&d.digest).ok())
        .collect()
}
