//! The one error type of this crate.
//!
//! Messages name the image and say what to do, because they end up in a release's step log and
//! in `enclii verify` output. They never carry key material, passwords or registry credentials:
//! key errors use fixed texts rather than the underlying parser's (which could quote key bytes).

/// Why signing, verifying or attaching failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The image reference does not parse.
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidReference { image: String, reason: String },

    /// Signing needs the exact manifest: a tag could move between push and sign.
    #[error(
        "image reference must be pinned by digest (repo@sha256:…), got {image}: sign the digest the registry \
         returned when the image was pushed"
    )]
    NotPinned { image: String },

    /// `RegistryAuth` has only one of username and password.
    #[error("registry credentials for {registry} are incomplete: set both username and password, or neither")]
    IncompleteCredentials { registry: String },

    /// No connection (refused, DNS, TLS handshake, timeout).
    #[error("registry {registry} unreachable: {reason}{hint}")]
    RegistryUnreachable {
        registry: String,
        reason: String,
        /// A suggestion when the likely cause is known (e.g. HTTPS spoken to a plain-HTTP registry).
        hint: &'static str,
    },

    /// The registry rejected the credentials, or they lack the permission.
    #[error(
        "registry {registry} denied access to {image}: check the registry username and password, and that they may {action} this repository"
    )]
    Unauthorized {
        registry: String,
        image: String,
        /// "pull from" or "push to".
        action: &'static str,
    },

    /// Any other registry failure (5xx, protocol violation, corrupt blob).
    #[error("registry {registry} failed on {image}: {reason}")]
    Registry {
        registry: String,
        image: String,
        reason: String,
    },

    /// The image to sign, verify or attach to is not in the registry.
    #[error("image {image} not found in the registry: push it first, or check the repository and digest")]
    ImageNotFound { image: String },

    /// There is no cosign signature at all.
    #[error(
        "no cosign signature found for {image}: the image is unsigned; sign it (its release's sign step) or \
         deploy a signed release"
    )]
    Unsigned { image: String },

    /// There are signatures, but none by this key.
    #[error(
        "signature does not verify with the configured public key: none of the {count} cosign signature(s) on \
         {image} was made by the key {key}; check that the verifying key is the public half of the signing key"
    )]
    SignatureMismatch { image: String, count: usize, key: String },

    /// A signature by this key exists, but for another image: a copied or stale `.sig` manifest.
    #[error(
        "the cosign signature on {image} by the configured key is for a different image ({signed}): the \
         signature was copied from elsewhere; sign this image's digest"
    )]
    PayloadMismatch { image: String, signed: String },

    /// The signing or verifying key cannot be used.
    #[error("invalid key: {reason}")]
    InvalidKey { reason: String },

    /// An encrypted cosign key was given without a password (and the empty password did not open it).
    #[error("the signing key is encrypted (cosign format): provide its password")]
    PasswordRequired,

    /// The password does not decrypt the encrypted cosign key.
    #[error("wrong password for the encrypted signing key")]
    WrongPassword,

    /// The crypto backend failed to produce a signature or key (not expected in practice).
    #[error("cryptographic operation failed: {reason}")]
    Crypto { reason: String },

    /// Nothing is attached at the image's `.sbom` tag.
    #[error("no SBOM attached to {image}: attach one (its release's SBOM step) or check the image digest")]
    NoSbom { image: String },

    /// The bytes given to `attach_sbom` are not a CycloneDX JSON document.
    #[error("not a CycloneDX JSON SBOM: {reason}")]
    InvalidSbom { reason: String },
}
