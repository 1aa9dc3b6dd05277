//! SBOMs attached to images the way `cosign attach sbom --type cyclonedx` does: an image manifest
//! tagged `host/repo:sha256-<hex>.sbom` with one layer of media type
//! `application/vnd.cyclonedx+json`, so `cosign download sbom` and other cosign-aware tools
//! find it.

use crate::registry::{ImageRef, Registry};
use crate::{RegistryAuth, SigningError};

/// Media type of a CycloneDX JSON document.
pub const CYCLONEDX_JSON_MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";
/// SBOMs of large images run to megabytes; this bounds what a hostile registry can make us read.
const MAX_SBOM: usize = 64 << 20;

/// Pushes a CycloneDX JSON SBOM as an artifact attached to `image` (a tag or digest reference;
/// a tag is resolved to its digest) and returns the reference it was pushed to,
/// `host/repo:sha256-<hex>.sbom`. Replaces an SBOM attached before, as cosign does.
pub async fn attach_sbom(auth: &RegistryAuth, image: &str, sbom_json: &[u8]) -> Result<String, SigningError> {
    check_cyclonedx(sbom_json)?;
    let image_ref = ImageRef::parse(image)?;
    let registry = Registry::connect(auth, &image_ref).await?;
    let digest = registry.resolve(&image_ref).await?;
    let target = image_ref.attached(&digest, "sbom");
    let layer = registry
        .push_layer(&target, sbom_json.to_vec(), CYCLONEDX_JSON_MEDIA_TYPE, None)
        .await?;
    registry.push_manifest(&target, vec![layer]).await?;
    let reference = target.whole();
    tracing::info!(image = %image_ref.pinned(&digest), sbom = %reference, bytes = sbom_json.len(), "attached SBOM");
    Ok(reference)
}

/// Reads back the CycloneDX JSON SBOM attached to `image` (a tag or digest reference).
pub async fn fetch_sbom(auth: &RegistryAuth, image: &str) -> Result<Vec<u8>, SigningError> {
    let image_ref = ImageRef::parse(image)?;
    let registry = Registry::connect(auth, &image_ref).await?;
    let digest = registry.resolve(&image_ref).await?;
    let target = image_ref.attached(&digest, "sbom");
    let no_sbom = || SigningError::NoSbom {
        image: image_ref.pinned(&digest),
    };
    let (manifest, _) = registry.manifest(&target).await?.ok_or_else(no_sbom)?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == CYCLONEDX_JSON_MEDIA_TYPE)
        .ok_or_else(no_sbom)?;
    registry.blob(&target, layer, MAX_SBOM).await
}

/// Catches the wrong file (an SPDX document, a build log) before it is published as the SBOM.
fn check_cyclonedx(sbom_json: &[u8]) -> Result<(), SigningError> {
    let invalid = |reason: String| SigningError::InvalidSbom { reason };
    let document: serde_json::Value =
        serde_json::from_slice(sbom_json).map_err(|e| invalid(format!("not valid JSON ({e})")))?;
    match document.get("bomFormat").and_then(serde_json::Value::as_str) {
        Some("CycloneDX") => Ok(()),
        Some(other) => Err(invalid(format!("bomFormat is {other:?}, expected \"CycloneDX\""))),
        None => Err(invalid("no \"bomFormat\": \"CycloneDX\" field at the top level".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cyclonedx_json_is_accepted() {
        assert!(check_cyclonedx(br#"{"bomFormat":"CycloneDX","specVersion":"1.5"}"#).is_ok());
        for bad in [
            &br#"{"spdxVersion":"SPDX-2.3"}"#[..],
            br#"{"bomFormat":"SPDX"}"#,
            b"not json",
            b"[]",
        ] {
            let err = check_cyclonedx(bad).unwrap_err();
            assert!(matches!(err, SigningError::InvalidSbom { .. }), "{err}");
        }
    }
}
