//! Cosign-compatible signing of OCI images with a key pair, fully offline (no Fulcio, no Rekor).
//!
//! - [`sign`] / [`verify`]: cosign signatures at `host/repo:sha256-<hex>.sig`, readable by
//!   `cosign verify --key cosign.pub` (and `--insecure-ignore-tlog`, as nothing is in Rekor).
//! - [`attach_sbom`] / [`fetch_sbom`]: a CycloneDX SBOM at `host/repo:sha256-<hex>.sbom`, as
//!   `cosign attach sbom` stores it.
//! - [`SigningKey`] / [`VerifyingKey`]: ECDSA P-256 keys, including cosign's encrypted key files.
//!
//! Keys and signature crypto come from the `sigstore` crate; registry I/O is `oci-client`.

mod attach;
mod cosign;
mod error;
mod key;
mod registry;
mod secret;

use std::sync::Once;

use sha2::Digest as _;

pub use attach::{CYCLONEDX_JSON_MEDIA_TYPE, attach_sbom, fetch_sbom};
pub use cosign::{SignatureRef, Verified, sign, verify};
pub use error::SigningError;
pub use key::{SigningKey, VerifyingKey};
pub use registry::RegistryAuth;
pub use secret::Secret;

/// Makes `ring` the process-wide rustls provider, if no provider was installed yet.
///
/// With sigstore in the build, rustls has both `ring` (used by the rest of the workspace) and
/// `aws-lc-rs` compiled in and then cannot pick a default by itself; TLS clients built without
/// an explicit provider would fail. Every network call of this crate calls this first; a
/// binary may call it early too. Idempotent.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `sha256:<hex>`, the OCI digest of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let hash = sha2::Sha256::digest(data);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_oci_formatted() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn public_futures_and_keys_can_cross_threads() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SigningKey>();
        assert_send_sync::<VerifyingKey>();
        assert_send_sync::<SigningError>();
        let auth = RegistryAuth::default();
        let key = SigningKey::generate().unwrap();
        assert_send(&sign(&auth, "example.com/a@sha256:00", &key, Default::default()));
        assert_send(&verify(&auth, "example.com/a:tag", key.verifying_key()));
        assert_send(&attach_sbom(&auth, "example.com/a:tag", b"{}"));
        assert_send(&fetch_sbom(&auth, "example.com/a:tag"));
    }

    #[test]
    fn registry_auth_debug_hides_the_password() {
        let auth = RegistryAuth {
            insecure: false,
            username: Some("ci".into()),
            password: Some(Secret::new("hunter2")),
        };
        let debug = format!("{auth:?}");
        assert!(
            debug.contains("ci") && debug.contains("<redacted>") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
