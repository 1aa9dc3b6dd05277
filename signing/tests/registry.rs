//! Against a real registry: `ENCLII_TEST_REGISTRY` (default `127.0.0.1:5000`, plain HTTP, no
//! auth; see ENVIRONMENT.md, "OCI registry"). Every test pushes its own random image into its own
//! repository, so tests run in parallel and reruns never see old state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use enclii_signing::{
    RegistryAuth, Secret, SigningError, SigningKey, VerifyingKey, attach_sbom, fetch_sbom, sign, verify,
};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn registry() -> String {
    std::env::var("ENCLII_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".to_owned())
}

fn auth() -> RegistryAuth {
    RegistryAuth {
        insecure: true,
        ..RegistryAuth::default()
    }
}

/// A plain oci-client, to set up images and to inspect what the crate wrote.
fn oci() -> Client {
    enclii_signing::install_crypto_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// `host/enclii-signing-test/<test>-<random>`: a fresh repository per test.
fn repo(test: &str) -> String {
    format!("{}/enclii-signing-test/{test}-{}", registry(), random_hex(6))
}

fn digest_of(image: &str) -> &str {
    image.split_once('@').expect("a digest reference").1
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Pushes a tiny image (config + one random layer) as `repo:tag`; returns `repo@sha256:…`.
async fn push_image(repo: &str, tag: &str) -> String {
    let layer = ImageLayer::oci_v1(random_hex(512).into_bytes(), None);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [layer.sha256_digest()] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let reference: Reference = format!("{repo}:{tag}").parse().unwrap();
    let client = oci();
    client
        .push(&reference, &[layer], config, &OciAuth::Anonymous, None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "pushing a test image to {}: {e} (is the registry running? see ENVIRONMENT.md)",
                registry()
            )
        });
    let digest = client
        .fetch_manifest_digest(&reference, &OciAuth::Anonymous)
        .await
        .unwrap();
    format!("{repo}@{digest}")
}

/// The manifest at `repo:sha256-<hex>.<suffix>`, read back with a plain client.
async fn attached_manifest(image: &str, suffix: &str) -> (Reference, OciImageManifest) {
    let (repo, digest) = image.split_once('@').unwrap();
    let reference: Reference = format!("{repo}:{}.{suffix}", digest.replace(':', "-")).parse().unwrap();
    match oci().pull_manifest(&reference, &OciAuth::Anonymous).await.unwrap() {
        (OciManifest::Image(manifest), _) => (reference, manifest),
        (other, _) => panic!("expected an image manifest at {reference}, got {other:?}"),
    }
}

async fn blob(reference: &Reference, digest: &str) -> Vec<u8> {
    let mut data = Vec::new();
    oci().pull_blob(reference, digest, &mut data).await.unwrap();
    data
}

#[tokio::test]
async fn sign_then_verify_round_trips_the_annotations() {
    let repo = repo("roundtrip");
    let image = push_image(&repo, "v1").await;
    let key = SigningKey::generate().unwrap();
    let signed = annotations(&[("git_sha", "0123abcd"), ("release_id", "rel_42")]);

    let signature = sign(&auth(), &image, &key, signed.clone()).await.unwrap();
    assert_eq!(
        signature.reference,
        format!("{repo}:{}.sig", digest_of(&image).replace(':', "-"))
    );
    let at_tag = oci()
        .fetch_manifest_digest(&signature.reference.parse().unwrap(), &OciAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(
        signature.digest, at_tag,
        "the returned digest is the manifest now at the .sig tag"
    );

    // Verified with the public key as configured: PEM text, not the in-memory key pair.
    let public = VerifyingKey::from_pem(key.public_pem().as_bytes()).unwrap();
    let verified = verify(&auth(), &image, &public).await.unwrap();
    assert_eq!(verified.image, image);
    assert_eq!(verified.digest, digest_of(&image));
    assert_eq!(verified.annotations, signed);
}

#[tokio::test]
async fn another_key_does_not_verify() {
    let image = push_image(&repo("otherkey"), "v1").await;
    let key = SigningKey::generate().unwrap();
    sign(&auth(), &image, &key, BTreeMap::new()).await.unwrap();

    let other = SigningKey::generate().unwrap();
    let err = verify(&auth(), &image, other.verifying_key()).await.unwrap_err();
    assert!(
        matches!(err, SigningError::SignatureMismatch { count: 1, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("signature does not verify with the configured public key"),
        "{message}"
    );
    assert!(
        message.contains(&image) && message.contains(other.verifying_key().fingerprint()),
        "{message}"
    );
}

#[tokio::test]
async fn an_unsigned_image_is_reported_as_unsigned() {
    let image = push_image(&repo("unsigned"), "v1").await;
    let key = SigningKey::generate().unwrap();
    let err = verify(&auth(), &image, key.verifying_key()).await.unwrap_err();
    assert!(matches!(err, SigningError::Unsigned { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no cosign signature found for {image}: the image is unsigned; sign it (its release's sign step) or \
             deploy a signed release"
        )
    );
}

#[tokio::test]
async fn a_tag_is_verified_as_the_digest_it_points_to() {
    let repo = repo("tag");
    let first = push_image(&repo, "stable").await;
    let key = SigningKey::generate().unwrap();
    sign(&auth(), &first, &key, BTreeMap::new()).await.unwrap();

    let verified = verify(&auth(), &format!("{repo}:stable"), key.verifying_key())
        .await
        .unwrap();
    assert_eq!(verified.image, first);
    assert_eq!(verified.digest, digest_of(&first));

    // Move the tag to an unsigned image: the tag must now fail, naming the new digest.
    let second = push_image(&repo, "stable").await;
    assert_ne!(first, second);
    let err = verify(&auth(), &format!("{repo}:stable"), key.verifying_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SigningError::Unsigned { image } if *image == second),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_encrypted_cosign_key_signs_after_a_round_trip() {
    let image = push_image(&repo("encrypted"), "v1").await;
    let original = SigningKey::generate().unwrap();
    let password = Secret::new("s3cret pass");
    let encrypted = original.encrypted_pem(&password).unwrap();
    assert!(!encrypted.contains(original.private_pem().unwrap().expose().lines().nth(1).unwrap()));

    let loaded = SigningKey::from_pem(encrypted.as_bytes(), Some(&password)).unwrap();
    sign(&auth(), &image, &loaded, BTreeMap::new()).await.unwrap();
    verify(&auth(), &image, original.verifying_key()).await.unwrap();

    let err = SigningKey::from_pem(encrypted.as_bytes(), Some(&Secret::new("s3cret pasS"))).unwrap_err();
    assert!(matches!(err, SigningError::WrongPassword), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// The signature checks out with openssl alone: nothing of this crate or sigstore involved.
#[tokio::test]
async fn the_signature_verifies_with_openssl() {
    let repo = repo("openssl");
    let image = push_image(&repo, "v1").await;
    let key = SigningKey::generate().unwrap();
    sign(&auth(), &image, &key, annotations(&[("release_id", "rel_7")]))
        .await
        .unwrap();

    let (reference, manifest) = attached_manifest(&image, "sig").await;
    assert_eq!(manifest.layers.len(), 1);
    let layer = &manifest.layers[0];
    assert_eq!(layer.media_type, SIMPLE_SIGNING);
    let payload = blob(&reference, &layer.digest).await;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&layer.annotations.as_ref().unwrap()[SIGNATURE_ANNOTATION])
        .unwrap();

    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "critical": {
                "identity": { "docker-reference": repo },
                "image": { "docker-manifest-digest": digest_of(&image) },
                "type": "cosign container image signature",
            },
            "optional": { "release_id": "rel_7" },
        })
    );

    let dir = TempDir::new("openssl");
    let write = |name: &str, data: &[u8]| {
        let path = dir.0.join(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let public = write("cosign.pub", key.public_pem().as_bytes());
    let sig = write("sig.der", &signature);
    let openssl = |payload: &PathBuf| {
        let output = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sig)
            .arg(payload)
            .output()
            .expect("openssl is installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(openssl(&write("payload.json", &payload)).trim(), "Verified OK");
    // Control: one changed byte must fail, or the check above proves nothing.
    let mut tampered = payload.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_ne!(openssl(&write("tampered.json", &tampered)).trim(), "Verified OK");
}

#[tokio::test]
async fn signatures_accumulate_and_a_retry_adds_none() {
    let image = push_image(&repo("append"), "v1").await;
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let release = annotations(&[("release_id", "rel_1")]);

    let first = sign(&auth(), &image, &a, release.clone()).await.unwrap();
    sign(&auth(), &image, &b, release.clone()).await.unwrap();
    let retry = sign(&auth(), &image, &a, release.clone()).await.unwrap();
    assert_eq!(
        attached_manifest(&image, "sig").await.1.layers.len(),
        2,
        "a retry must not add a layer"
    );
    assert_ne!(first.digest, retry.digest, "b's signature changed the manifest");

    assert_eq!(
        verify(&auth(), &image, a.verifying_key()).await.unwrap().annotations,
        release
    );
    assert_eq!(
        verify(&auth(), &image, b.verifying_key()).await.unwrap().annotations,
        release
    );

    // Different annotations are a different statement: a new signature.
    sign(&auth(), &image, &a, annotations(&[("release_id", "rel_2")]))
        .await
        .unwrap();
    assert_eq!(attached_manifest(&image, "sig").await.1.layers.len(), 3);
}

#[tokio::test]
async fn a_signature_copied_from_another_image_is_refused() {
    let repo = repo("copied");
    let signed = push_image(&repo, "a").await;
    let unsigned = push_image(&repo, "b").await;
    let key = SigningKey::generate().unwrap();
    sign(&auth(), &signed, &key, BTreeMap::new()).await.unwrap();

    // Put the signed image's .sig manifest at the other image's .sig tag (blobs are shared
    // within the repository).
    let (from, _) = attached_manifest(&signed, "sig").await;
    let (raw, _) = oci()
        .pull_manifest_raw(
            &from,
            &OciAuth::Anonymous,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .unwrap();
    let to: Reference = format!("{repo}:{}.sig", digest_of(&unsigned).replace(':', "-"))
        .parse()
        .unwrap();
    let client = oci();
    client.store_auth_if_needed(&registry(), &OciAuth::Anonymous).await;
    client
        .push_manifest_raw(
            &to,
            raw.to_vec(),
            "application/vnd.oci.image.manifest.v1+json".parse().unwrap(),
        )
        .await
        .unwrap();

    let err = verify(&auth(), &unsigned, key.verifying_key()).await.unwrap_err();
    assert!(
        matches!(&err, SigningError::PayloadMismatch { image, signed: other } if *image == unsigned && other == digest_of(&signed)),
        "{err:?}"
    );
}

#[tokio::test]
async fn sigstore_reads_our_signatures_and_we_read_sigstores() {
    use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
    use sigstore::cosign::{ClientBuilder, Constraint, CosignCapabilities, SignatureLayer, verify_constraints};
    use sigstore::crypto::SigningScheme;
    use sigstore::registry::{Auth, ClientProtocol, OciReference};

    let scheme = SigningScheme::ECDSA_P256_SHA256_ASN1;
    let mut client = ClientBuilder::default()
        .with_oci_client_config(sigstore::registry::ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![registry()]),
            ..Default::default()
        })
        .build()
        .unwrap();

    // Ours, read by sigstore's cosign client.
    let ours = push_image(&repo("interop-ours"), "v1").await;
    let key = SigningKey::generate().unwrap();
    sign(&auth(), &ours, &key, annotations(&[("release_id", "rel_9")]))
        .await
        .unwrap();
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &ours.parse::<OciReference>().unwrap())
        .await
        .unwrap();
    assert_eq!(layers.len(), 1);
    let good: VerificationConstraintVec = vec![Box::new(
        PublicKeyVerifier::new(key.public_pem().as_bytes(), &scheme).unwrap(),
    )];
    verify_constraints(&layers, good.iter()).expect("sigstore accepts our signature");
    let other = SigningKey::generate().unwrap();
    let bad: VerificationConstraintVec = vec![Box::new(
        PublicKeyVerifier::new(other.public_pem().as_bytes(), &scheme).unwrap(),
    )];
    assert!(
        verify_constraints(&layers, bad.iter()).is_err(),
        "control: another key must not verify"
    );

    // Sigstore's, read by us.
    let theirs = push_image(&repo("interop-theirs"), "v1").await;
    let theirs_ref: OciReference = theirs.parse().unwrap();
    let (target, digest) = client.triangulate(&theirs_ref, &Auth::Anonymous).await.unwrap();
    let mut layer = SignatureLayer::new_unsigned(&theirs_ref, &digest).unwrap();
    let signer = scheme.create_signer().unwrap();
    let public = signer.to_sigstore_keypair().unwrap().public_key_to_pem().unwrap();
    assert!(
        sigstore::cosign::constraint::PrivateKeySigner::new_with_signer(signer)
            .add_constraint(&mut layer)
            .unwrap()
    );
    client
        .push_signature(None, &Auth::Anonymous, &target, vec![layer])
        .await
        .unwrap();
    let verified = verify(&auth(), &theirs, &VerifyingKey::from_pem(public.as_bytes()).unwrap())
        .await
        .unwrap();
    assert_eq!(verified.digest, digest);
    assert!(verified.annotations.is_empty());
}

#[tokio::test]
async fn an_sbom_attaches_and_reads_back_as_cosign_lays_it_out() {
    let repo = repo("sbom");
    let image = push_image(&repo, "v1").await;
    let sbom = serde_json::to_vec(&serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", random_hex(16)),
        "components": [],
    }))
    .unwrap();

    // Attached through the tag: it lands on the digest the tag points to.
    let attached = attach_sbom(&auth(), &format!("{repo}:v1"), &sbom).await.unwrap();
    assert_eq!(attached, format!("{repo}:{}.sbom", digest_of(&image).replace(':', "-")));
    let (reference, manifest) = attached_manifest(&image, "sbom").await;
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, "application/vnd.cyclonedx+json");
    assert_eq!(blob(&reference, &manifest.layers[0].digest).await, sbom);

    assert_eq!(fetch_sbom(&auth(), &image).await.unwrap(), sbom);

    let bare = push_image(&repo, "v2").await;
    let err = fetch_sbom(&auth(), &bare).await.unwrap_err();
    assert!(
        matches!(&err, SigningError::NoSbom { image } if *image == bare),
        "{err:?}"
    );
    let err = attach_sbom(&auth(), &bare, br#"{"spdxVersion":"SPDX-2.3"}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, SigningError::InvalidSbom { .. }), "{err:?}");
}

#[tokio::test]
async fn signing_needs_a_digest_and_an_existing_image() {
    let repo = repo("pinned");
    push_image(&repo, "v1").await;
    let key = SigningKey::generate().unwrap();
    let err = sign(&auth(), &format!("{repo}:v1"), &key, BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SigningError::NotPinned { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("image reference must be pinned by digest (repo@sha256:…)"),
        "{err}"
    );

    let missing = format!("{repo}@sha256:{}", "ab".repeat(32));
    let err = sign(&auth(), &missing, &key, BTreeMap::new()).await.unwrap_err();
    assert!(
        matches!(&err, SigningError::ImageNotFound { image } if image.ends_with(&"ab".repeat(32))),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_named() {
    let key = SigningKey::generate().unwrap();
    // Port 1 on loopback: nothing listens, so the connection is refused at once.
    let err = verify(&auth(), "127.0.0.1:1/shop/api:v1", key.verifying_key())
        .await
        .unwrap_err();
    assert!(matches!(err, SigningError::RegistryUnreachable { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("registry 127.0.0.1:1 unreachable: "),
        "{err}"
    );

    let err = verify(&RegistryAuth::default(), "127.0.0.1:1/shop/api:v1", key.verifying_key())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("configure it as insecure"), "{err}");
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("enclii-signing-{name}-{}", random_hex(8)));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
