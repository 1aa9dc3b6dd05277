//! The referrers index (OCI distribution 1.1): for each subject digest, one file per manifest
//! that names it as `subject`, holding that manifest's descriptor
//! (`_referrers/sha256/<subject hex>/<referrer hex>`).

use std::io;

use serde_json::Value;

use crate::Inner;
use crate::error::{Result, io};
use crate::names::{Digest, Name};
use crate::storage::file_names;

pub(crate) async fn add(
    inner: &Inner,
    name: &Name,
    subject: &Digest,
    referrer: &Digest,
    descriptor: Value,
) -> Result<()> {
    let path = inner.storage.referrers_dir(name, subject).join(referrer.hex());
    let bytes = serde_json::to_vec(&descriptor).unwrap_or_default();
    inner.storage.write_atomic(&path, &bytes).await
}

pub(crate) async fn remove(inner: &Inner, name: &Name, subject: &Digest, referrer: &Digest) -> Result<()> {
    let path = inner.storage.referrers_dir(name, subject).join(referrer.hex());
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &path)(e)),
    }
}

/// The descriptors of the manifests referring to `subject`, those of `artifact_type` only if
/// given, sorted by digest. An unknown subject has none (not an error, as the spec says).
pub(crate) async fn list(
    inner: &Inner,
    name: &Name,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Vec<Value>> {
    let dir = inner.storage.referrers_dir(name, subject);
    let mut found = Vec::new();
    for file in file_names(&dir).await? {
        let Some(referrer) = Digest::from_hex(&file) else {
            continue;
        };
        let path = dir.join(file);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            // Deleted since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &path)(e)),
        };
        let Ok(mut descriptor) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if artifact_type.is_some_and(|wanted| descriptor.get("artifactType").and_then(Value::as_str) != Some(wanted)) {
            continue;
        }
        // Drop absent optional fields rather than listing them as null.
        if let Some(object) = descriptor.as_object_mut() {
            object.retain(|_, value| !value.is_null());
        }
        found.push((referrer, descriptor));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.into_iter().map(|(_, descriptor)| descriptor).collect())
}
