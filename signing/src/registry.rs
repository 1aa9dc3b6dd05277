//! Talking to the registry: references, one client per call, small artifacts (signature and SBOM
//! manifests), and turning `oci-client` errors into actionable ones.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};

use crate::{Secret, SigningError, sha256_digest};

/// Where images live and how to log in.
///
/// `Debug` is safe to log: the password is a [`Secret`].
#[derive(Clone, Debug, Default)]
pub struct RegistryAuth {
    /// Speak plain HTTP to the image's registry (e.g. `127.0.0.1:5000`) instead of HTTPS.
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// A parsed image reference, with the checks this crate needs on top of the OCI grammar.
pub(crate) struct ImageRef {
    reference: Reference,
}

impl ImageRef {
    pub(crate) fn parse(image: &str) -> Result<Self, SigningError> {
        let invalid = |reason: String| SigningError::InvalidReference {
            image: image.to_owned(),
            reason,
        };
        let reference: Reference = image.parse().map_err(|e| invalid(format!("{e}")))?;
        if let Some(digest) = reference.digest() {
            // The grammar only checks the length; the `.sig`/`.sbom` tag is built from this.
            let valid = digest
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            if !valid {
                return Err(invalid(
                    "the digest must be sha256: followed by 64 lowercase hex digits".into(),
                ));
            }
        }
        Ok(Self { reference })
    }

    /// `host/repo`, as cosign writes it into the payload's `docker-reference`.
    pub(crate) fn repository(&self) -> String {
        format!("{}/{}", self.reference.registry(), self.reference.repository())
    }

    /// The digest the reference is pinned to, if any.
    pub(crate) fn digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// `host/repo@<digest>`.
    pub(crate) fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository())
    }

    /// The tag cosign attaches things under: `host/repo:sha256-<hex>.<suffix>`.
    pub(crate) fn attached(&self, digest: &str, suffix: &str) -> Reference {
        Reference::with_tag(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            format!("{}.{suffix}", digest.replace(':', "-")),
        )
    }

    pub(crate) fn as_str(&self) -> String {
        self.reference.whole()
    }
}

/// A client for one registry, for the span of one public call.
pub(crate) struct Registry {
    client: Client,
    host: String,
    insecure: bool,
}

impl Registry {
    pub(crate) async fn connect(auth: &RegistryAuth, image: &ImageRef) -> Result<Self, SigningError> {
        crate::install_crypto_provider();
        let host = image.reference.resolve_registry().to_owned();
        let credentials = match (&auth.username, &auth.password) {
            (None, None) => OciAuth::Anonymous,
            (Some(username), Some(password)) => OciAuth::Basic(username.clone(), password.expose().to_owned()),
            _ => return Err(SigningError::IncompleteCredentials { registry: host }),
        };
        let config = ClientConfig {
            protocol: if auth.insecure {
                ClientProtocol::HttpsExcept(vec![host.clone()])
            } else {
                ClientProtocol::Https
            },
            // Signature and SBOM blobs are small: one PUT instead of a chunked upload session.
            use_monolithic_push: true,
            // A registry that is down should fail a release step, not hang it.
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| SigningError::Registry {
            registry: host.clone(),
            image: image.as_str(),
            reason: format!("cannot set up the registry client: {e}"),
        })?;
        client.store_auth_if_needed(&host, &credentials).await;
        Ok(Self {
            client,
            host,
            insecure: auth.insecure,
        })
    }

    /// The digest the image's tag or digest resolves to; checks that the image exists.
    pub(crate) async fn resolve(&self, image: &ImageRef) -> Result<String, SigningError> {
        let name = image.as_str();
        match self
            .client
            .fetch_manifest_digest(&image.reference, &self.stored_auth())
            .await
        {
            Ok(digest) => Ok(digest),
            Err(e) if is_not_found(&e) => Err(SigningError::ImageNotFound { image: name }),
            Err(e) => Err(self.error(&name, "pull from", e)),
        }
    }

    /// The image manifest at `reference` and its digest, or `None` if there is none.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<(OciImageManifest, String)>, SigningError> {
        let name = reference.whole();
        match self.client.pull_manifest(reference, &self.stored_auth()).await {
            Ok((OciManifest::Image(manifest), digest)) => Ok(Some((manifest, digest))),
            Ok((OciManifest::ImageIndex(_), _)) => Err(SigningError::Registry {
                registry: self.host.clone(),
                image: name,
                reason: "expected an image manifest, found an image index".into(),
            }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(&name, "pull from", e)),
        }
    }

    /// A blob of the repository of `reference`, refusing more than `limit` bytes (the registry
    /// is not trusted with our memory). `oci-client` checks the digest.
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        layer: &OciDescriptor,
        limit: usize,
    ) -> Result<Vec<u8>, SigningError> {
        let name = reference.whole();
        let too_big = || SigningError::Registry {
            registry: self.host.clone(),
            image: name.clone(),
            reason: format!("blob {} is larger than the {limit}-byte limit", layer.digest),
        };
        if usize::try_from(layer.size).map_or(true, |size| size > limit) {
            return Err(too_big());
        }
        let mut stream = self
            .client
            .pull_blob_stream(reference, layer)
            .await
            .map_err(|e| self.error(&name, "pull from", e))?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| SigningError::Registry {
                registry: self.host.clone(),
                image: name.clone(),
                reason: format!("reading blob {}: {}", layer.digest, chain(&e)),
            })?;
            if data.len() + chunk.len() > limit {
                return Err(too_big());
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Uploads `data` as a blob into the repository of `target` and describes it as a layer.
    pub(crate) async fn push_layer(
        &self,
        target: &Reference,
        data: Vec<u8>,
        media_type: &str,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Result<OciDescriptor, SigningError> {
        let descriptor = OciDescriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&data),
            size: i64::try_from(data.len()).unwrap_or(i64::MAX),
            annotations,
            ..OciDescriptor::default()
        };
        self.client
            .push_blob(target, data, &descriptor.digest)
            .await
            .map_err(|e| self.error(&target.whole(), "push to", e))?;
        Ok(descriptor)
    }

    /// Writes an OCI image manifest of `layers` (already uploaded) under `target`'s tag, the shape
    /// cosign gives signature and SBOM images; returns the manifest's digest.
    pub(crate) async fn push_manifest(
        &self,
        target: &Reference,
        layers: Vec<OciDescriptor>,
    ) -> Result<String, SigningError> {
        let name = target.whole();
        // An image config like the one cosign (go-containerregistry) writes: the layers are
        // uncompressed, so their diff IDs are their digests.
        let config = serde_json::json!({
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>() },
        });
        let config = self
            .push_layer(
                target,
                serde_json::to_vec(&config).unwrap_or_default(),
                IMAGE_CONFIG_MEDIA_TYPE,
                None,
            )
            .await?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config,
            layers,
            ..OciImageManifest::default()
        };
        // Serialized here, not by oci-client, so that the digest returned is of the exact bytes.
        let body = serde_json::to_vec(&manifest).map_err(|e| SigningError::Registry {
            registry: self.host.clone(),
            image: name.clone(),
            reason: format!("cannot encode the manifest: {e}"),
        })?;
        let digest = sha256_digest(&body);
        self.client
            .push_manifest_raw(target, body, http_header(OCI_IMAGE_MEDIA_TYPE))
            .await
            .map_err(|e| self.error(&name, "push to", e))?;
        Ok(digest)
    }

    /// The credentials were stored per registry at `connect`; oci-client wants them again per
    /// call and only uses them if nothing is stored, so anonymous is fine here.
    fn stored_auth(&self) -> OciAuth {
        OciAuth::Anonymous
    }

    fn error(&self, image: &str, action: &'static str, error: OciDistributionError) -> SigningError {
        let registry = self.host.clone();
        let image = image.to_owned();
        match &error {
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                let hint = if self.insecure {
                    ""
                } else {
                    " (if the registry serves plain HTTP, configure it as insecure)"
                };
                SigningError::RegistryUnreachable {
                    registry,
                    reason: chain(&error),
                    hint,
                }
            }
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                SigningError::Unauthorized {
                    registry,
                    image,
                    action,
                }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
            {
                SigningError::Unauthorized {
                    registry,
                    image,
                    action,
                }
            }
            OciDistributionError::ServerError { code: 401 | 403, .. } => SigningError::Unauthorized {
                registry,
                image,
                action,
            },
            _ => SigningError::Registry {
                registry,
                image,
                reason: chain(&error),
            },
        }
    }
}

fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// An error and its causes on one line ("error sending request: …: Connection refused").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn http_header(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}
