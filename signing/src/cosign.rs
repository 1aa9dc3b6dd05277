//! Cosign's key-pair signature format, read and written over the registry API.
//!
//! A signature of `host/repo@sha256:<hex>` lives in the image manifest tagged
//! `host/repo:sha256-<hex>.sig`: one layer per signature, each layer a "simple signing" JSON
//! payload (`application/vnd.dev.cosign.simplesigning.v1+json`) whose annotation
//! `dev.cosignproject.cosign/signature` is the base64 ASN.1 DER ECDSA signature over the exact
//! payload bytes. `cosign verify --key` and sigstore-rs read what this module writes, and the
//! other way round.
//!
//! The manifest is built here rather than with sigstore's `Client::push_signature`, which
//! replaces the `.sig` manifest with one holding only the new layers and re-encodes existing
//! ones (dropping their certificate and bundle annotations). Like `cosign sign`, [`sign`] keeps
//! the signatures already there and appends, and does not add a duplicate on a retry.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oci_client::manifest::OciDescriptor;
use serde::{Deserialize, Serialize};

use crate::registry::{ImageRef, Registry};
use crate::{RegistryAuth, SigningError, SigningKey, VerifyingKey, sha256_digest};

pub(crate) const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";
/// Payloads are a few hundred bytes; this bounds what a hostile registry can make us read.
const MAX_PAYLOAD: usize = 1 << 20;

/// Where [`sign`] stored the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureRef {
    /// `host/repo:sha256-<hex>.sig`.
    pub reference: String,
    /// Digest of the signature manifest now at that tag.
    pub digest: String,
}

/// What [`verify`] established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `host/repo@sha256:<hex>`: what to deploy, whatever tag was verified.
    pub image: String,
    /// The signed manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// The `optional` section of the verified payload (non-string values as JSON text).
    pub annotations: BTreeMap<String, String>,
}

/// The simple-signing payload, field for field as cosign writes it. Own types rather than
/// sigstore's `SimpleSigning`, whose `optional` claims the keys `creator` and `timestamp` with
/// fixed types and so fails on payloads that use them otherwise.
#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Identity {
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Image {
    docker_manifest_digest: String,
}

/// Signs `image` (must be `host/repo@sha256:<hex>`) and pushes the cosign signature to
/// `host/repo:sha256-<hex>.sig`, next to any signatures already there.
///
/// `annotations` go into the payload's `optional` section, so they are signed too (e.g. the git
/// sha and release id) and come back from [`verify`]. Signing the same image with the same key
/// and annotations again adds nothing.
pub async fn sign(
    auth: &RegistryAuth,
    image: &str,
    key: &SigningKey,
    annotations: BTreeMap<String, String>,
) -> Result<SignatureRef, SigningError> {
    let image_ref = ImageRef::parse(image)?;
    let digest = image_ref
        .digest()
        .ok_or_else(|| SigningError::NotPinned {
            image: image.to_owned(),
        })?
        .to_owned();
    let registry = Registry::connect(auth, &image_ref).await?;
    // Refuse to sign what the registry does not hold: the signature would dangle.
    registry.resolve(&image_ref).await?;

    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: image_ref.repository(),
            },
            image: Image {
                docker_manifest_digest: digest.clone(),
            },
            kind: SIGNATURE_TYPE.to_owned(),
        },
        // cosign writes `"optional":null` when there are no annotations.
        optional: (!annotations.is_empty()).then(|| {
            annotations
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect()
        }),
    };
    let payload = serde_json::to_vec(&payload).map_err(|e| SigningError::Crypto {
        reason: format!("encoding the payload: {e}"),
    })?;
    let payload_digest = sha256_digest(&payload);

    let target = image_ref.attached(&digest, "sig");
    let reference = target.whole();
    let (mut layers, existing) = match registry.manifest(&target).await? {
        Some((manifest, manifest_digest)) => (manifest.layers, Some(manifest_digest)),
        None => (Vec::new(), None),
    };
    if let Some(existing) = existing {
        // Same payload digest means same bytes, so only the signature needs checking.
        let already = layers.iter().any(|layer| {
            layer.digest == payload_digest
                && signature_of(layer).is_some_and(|signature| key.verifying_key().verifies(&signature, &payload))
        });
        if already {
            tracing::info!(image = %image_ref.pinned(&digest), signature = %reference, "image already signed with this key");
            return Ok(SignatureRef {
                reference,
                digest: existing,
            });
        }
    }

    let signature = BASE64.encode(key.sign(&payload)?);
    let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), signature)]);
    layers.push(
        registry
            .push_layer(&target, payload, SIMPLE_SIGNING_MEDIA_TYPE, Some(annotations))
            .await?,
    );
    let count = layers.len();
    let manifest_digest = registry.push_manifest(&target, layers).await?;
    tracing::info!(
        image = %image_ref.pinned(&digest),
        signature = %reference,
        key = %key.verifying_key(),
        signatures = count,
        "signed image"
    );
    Ok(SignatureRef {
        reference,
        digest: manifest_digest,
    })
}

/// Verifies that `image` (a tag or a digest reference) has at least one cosign signature by
/// `key` over its digest; a tag is resolved to its digest first, and that digest is what the
/// result names, so deploy `Verified::image` rather than the tag.
pub async fn verify(auth: &RegistryAuth, image: &str, key: &VerifyingKey) -> Result<Verified, SigningError> {
    let image_ref = ImageRef::parse(image)?;
    let registry = Registry::connect(auth, &image_ref).await?;
    let digest = registry.resolve(&image_ref).await?;
    let pinned = image_ref.pinned(&digest);
    let target = image_ref.attached(&digest, "sig");

    let Some((manifest, _)) = registry.manifest(&target).await? else {
        return Err(SigningError::Unsigned { image: pinned });
    };
    let candidates: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .collect();
    if candidates.is_empty() {
        return Err(SigningError::Unsigned { image: pinned });
    }

    let mut signed_other = None;
    for layer in &candidates {
        let Some(signature) = signature_of(layer) else { continue };
        let payload = registry.blob(&target, layer, MAX_PAYLOAD).await?;
        // Authenticate before interpreting anything in the payload.
        if !key.verifies(&signature, &payload) {
            continue;
        }
        let Ok(payload) = serde_json::from_slice::<Payload>(&payload) else {
            continue;
        };
        if payload.critical.kind != SIGNATURE_TYPE {
            continue;
        }
        if payload.critical.image.docker_manifest_digest != digest {
            signed_other = Some(payload.critical.image.docker_manifest_digest);
            continue;
        }
        let annotations = payload
            .optional
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        tracing::debug!(image = %pinned, key = %key, "verified cosign signature");
        return Ok(Verified {
            image: pinned,
            digest,
            annotations,
        });
    }
    Err(match signed_other {
        Some(signed) => SigningError::PayloadMismatch { image: pinned, signed },
        None => SigningError::SignatureMismatch {
            image: pinned,
            count: candidates.len(),
            key: key.fingerprint().to_owned(),
        },
    })
}

/// The DER signature a signature layer carries, if it carries a well-formed one.
fn signature_of(layer: &OciDescriptor) -> Option<Vec<u8>> {
    let encoded = layer.annotations.as_ref()?.get(SIGNATURE_ANNOTATION)?;
    BASE64.decode(encoded).ok()
}
