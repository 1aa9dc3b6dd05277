//! Key pairs in the formats cosign reads and writes: ECDSA P-256 (cosign's default), private keys
//! as unencrypted PKCS#8 or cosign's scrypt + secretbox "ENCRYPTED SIGSTORE PRIVATE KEY".
//!
//! Parsing and crypto are sigstore's; this module adds the checks and errors an operator needs
//! (which key is wrong, whether a password is missing or wrong) without echoing key material.

use std::fmt;
use std::sync::Arc;

use sigstore::crypto::signing_key::ecdsa::{ECDSAKeys, EllipticCurve};
use sigstore::crypto::signing_key::{SigStoreSigner, kdf};
use sigstore::crypto::{CosignVerificationKey, Signature};
use sigstore::errors::SigstoreError;
use zeroize::Zeroizing;

use crate::{Secret, SigningError, sha256_digest};

const ENCRYPTED_SIGSTORE_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// Written by cosign before 2.0; same format.
const ENCRYPTED_COSIGN_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
const PKCS8_LABEL: &str = "PRIVATE KEY";
const PUBLIC_LABEL: &str = "PUBLIC KEY";

fn invalid(reason: impl Into<String>) -> SigningError {
    SigningError::InvalidKey { reason: reason.into() }
}

/// An ECDSA P-256 private key that signs images.
///
/// Cheap to clone (shared). `Debug` shows only the public key's fingerprint.
#[derive(Clone)]
pub struct SigningKey(Arc<Inner>);

struct Inner {
    keys: ECDSAKeys,
    signer: SigStoreSigner,
    public: VerifyingKey,
}

impl SigningKey {
    /// Reads a private key: unencrypted PKCS#8 (`PRIVATE KEY`), or cosign's encrypted format
    /// (`ENCRYPTED SIGSTORE PRIVATE KEY`, or `ENCRYPTED COSIGN PRIVATE KEY` from cosign < 2).
    ///
    /// For an encrypted key without a password, the empty password is tried, as cosign allows
    /// generating keys with one. A password given for an unencrypted key is ignored.
    pub fn from_pem(pem: &[u8], password: Option<&Secret>) -> Result<Self, SigningError> {
        // Errors of the PEM parser are dropped on purpose: they can quote bytes of the key.
        let block = pem::parse(pem).map_err(|_| invalid("not a PEM-encoded private key"))?;
        let der = match block.tag() {
            ENCRYPTED_SIGSTORE_LABEL | ENCRYPTED_COSIGN_LABEL => decrypt(block.contents(), password)?,
            PKCS8_LABEL => Zeroizing::new(block.contents().to_vec()),
            "EC PRIVATE KEY" => {
                return Err(invalid(
                    "SEC1 \"EC PRIVATE KEY\" is not supported: convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt -in key.pem`, or import it with `cosign import-key-pair`",
                ));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid(
                    "PKCS#8-encrypted keys are not supported: use cosign's encrypted format \
                     (`cosign import-key-pair`) or an unencrypted PKCS#8 key",
                ));
            }
            PUBLIC_LABEL => return Err(invalid("this is a public key; signing needs the private key")),
            other => {
                return Err(invalid(format!(
                    "unsupported PEM label {other:?}; expected a cosign or PKCS#8 private key"
                )));
            }
        };
        let keys = ECDSAKeys::from_der(&der).map_err(|_| {
            invalid("not an ECDSA private key; Enclii signs with ECDSA P-256 (what `cosign generate-key-pair` creates)")
        })?;
        Self::from_keys(keys)
    }

    /// A new random key pair.
    pub fn generate() -> Result<Self, SigningError> {
        let keys = ECDSAKeys::new(EllipticCurve::P256).map_err(crypto)?;
        Self::from_keys(keys)
    }

    fn from_keys(keys: ECDSAKeys) -> Result<Self, SigningError> {
        if !matches!(keys, ECDSAKeys::P256(_)) {
            return Err(invalid(format!(
                "{keys} key; Enclii signs with ECDSA P-256 (cosign's default)"
            )));
        }
        let signer = keys.to_sigstore_signer().map_err(crypto)?;
        let public_pem = keys.as_inner().public_key_to_pem().map_err(crypto)?;
        let public = VerifyingKey::from_pem(public_pem.as_bytes())?;
        Ok(Self(Arc::new(Inner { keys, signer, public })))
    }

    /// The private key as unencrypted PKCS#8 PEM.
    pub fn private_pem(&self) -> Result<Secret, SigningError> {
        let pem = self.0.keys.as_inner().private_key_to_pem().map_err(crypto)?;
        Ok(Secret::new(pem.as_str()))
    }

    /// The private key in cosign's encrypted format (what `cosign generate-key-pair` writes to
    /// `cosign.key`), safe to store where the password is not.
    pub fn encrypted_pem(&self, password: &Secret) -> Result<String, SigningError> {
        let pem = self
            .0
            .keys
            .as_inner()
            .private_key_to_encrypted_pem(password.expose().as_bytes())
            .map_err(crypto)?;
        Ok(pem.as_str().to_owned())
    }

    /// The public key as PEM (what `cosign public-key` prints).
    #[must_use]
    pub fn public_pem(&self) -> String {
        self.0.public.public_pem().to_owned()
    }

    /// The public half, for verifying.
    #[must_use]
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0.public
    }

    /// An ASN.1 DER ECDSA signature over SHA-256 of `message`, as cosign stores it (base64'd).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.0.signer.sign(message).map_err(crypto)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &"ECDSA P-256 SHA-256")
            .field("public_key", &self.0.public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// An ECDSA P-256 public key that verifies signatures.
#[derive(Clone)]
pub struct VerifyingKey {
    key: CosignVerificationKey,
    pem: String,
    fingerprint: String,
}

impl VerifyingKey {
    /// Reads a `PUBLIC KEY` PEM (SubjectPublicKeyInfo), e.g. cosign's `cosign.pub`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SigningError> {
        let block = pem::parse(pem).map_err(|_| invalid("not a PEM-encoded public key"))?;
        if block.tag() != PUBLIC_LABEL {
            return Err(invalid(format!(
                "expected a \"{PUBLIC_LABEL}\" PEM block, found {:?}; verification needs the public key",
                block.tag()
            )));
        }
        let key = CosignVerificationKey::try_from_der(block.contents())
            .map_err(|_| invalid("the public key could not be parsed (expected an ECDSA P-256 key)"))?;
        if !matches!(key, CosignVerificationKey::ECDSA_P256_SHA256_ASN1(_)) {
            return Err(invalid(
                "the public key is not ECDSA P-256; Enclii signs with ECDSA P-256",
            ));
        }
        let fingerprint = sha256_digest(block.contents());
        // Re-encoded so that `public_pem` is canonical whatever line breaks the input had.
        let pem = pem::encode(&pem::Pem::new(PUBLIC_LABEL, block.into_contents()));
        Ok(Self { key, pem, fingerprint })
    }

    /// The key as PEM.
    #[must_use]
    pub fn public_pem(&self) -> &str {
        &self.pem
    }

    /// `sha256:<hex>` of the DER public key: names the key in errors and logs.
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` (ASN.1 DER) is this key's signature over `message`.
    pub(crate) fn verifies(&self, signature: &[u8], message: &[u8]) -> bool {
        self.key.verify_signature(Signature::Raw(signature), message).is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VerifyingKey").field(&self.fingerprint).finish()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint)
    }
}

/// Opens cosign's encrypted key format, telling a wrong password from a damaged key.
fn decrypt(contents: &[u8], password: Option<&Secret>) -> Result<Zeroizing<Vec<u8>>, SigningError> {
    let attempt = kdf::decrypt(contents, password.map_or("", Secret::expose).as_bytes());
    match attempt {
        Ok(der) => Ok(Zeroizing::new(der)),
        // secretbox authentication failed: the derived key is wrong, i.e. so is the password.
        // (sigstore reports this as an "encrypt" error.)
        Err(SigstoreError::PrivateKeyEncryptError(_)) if password.is_none() => Err(SigningError::PasswordRequired),
        Err(SigstoreError::PrivateKeyEncryptError(_)) => Err(SigningError::WrongPassword),
        Err(_) => Err(invalid(
            "the encrypted key is damaged or uses parameters cosign does not write (expected scrypt + nacl/secretbox)",
        )),
    }
}

fn crypto(error: SigstoreError) -> SigningError {
    SigningError::Crypto {
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_its_public_half_verifies() {
        let key = SigningKey::generate().unwrap();
        let signature = key.sign(b"payload").unwrap();
        assert!(key.verifying_key().verifies(&signature, b"payload"));
        assert!(!key.verifying_key().verifies(&signature, b"payloae"));
        let other = SigningKey::generate().unwrap();
        assert!(!other.verifying_key().verifies(&signature, b"payload"));
    }

    #[test]
    fn private_pem_round_trips() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(key.private_pem().unwrap().expose().as_bytes(), None).unwrap();
        assert_eq!(again.public_pem(), key.public_pem());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SigningKey::generate().unwrap();
        let private = key.private_pem().unwrap();
        let body: String = private.expose().lines().filter(|l| !l.starts_with("-----")).collect();
        let debug = format!("{key:?}");
        assert!(debug.contains(key.verifying_key().fingerprint()), "{debug}");
        assert!(!debug.contains(&body[..16]), "{debug}");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_public_key_of_a_pkcs8_key_is_what_openssl_derives() {
        let key = SigningKey::from_pem(&fixture("pkcs8_private.key"), None).unwrap();
        let openssl = VerifyingKey::from_pem(&fixture("pkcs8_public.pub")).unwrap();
        assert_eq!(key.public_pem(), openssl.public_pem());
        assert_eq!(key.verifying_key().fingerprint(), openssl.fingerprint());
    }

    #[test]
    fn an_encrypted_key_round_trips_with_its_password_only() {
        let key = SigningKey::generate().unwrap();
        let password = Secret::new("correct horse");
        let encrypted = key.encrypted_pem(&password).unwrap();
        assert!(
            encrypted.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
            "{encrypted}"
        );

        let again = SigningKey::from_pem(encrypted.as_bytes(), Some(&password)).unwrap();
        assert_eq!(again.public_pem(), key.public_pem());
        let signature = again.sign(b"payload").unwrap();
        assert!(key.verifying_key().verifies(&signature, b"payload"));

        let wrong = SigningKey::from_pem(encrypted.as_bytes(), Some(&Secret::new("battery staple"))).unwrap_err();
        assert!(matches!(wrong, SigningError::WrongPassword), "{wrong}");
        assert_eq!(wrong.to_string(), "wrong password for the encrypted signing key");
        let missing = SigningKey::from_pem(encrypted.as_bytes(), None).unwrap_err();
        assert!(matches!(missing, SigningError::PasswordRequired), "{missing}");
    }

    #[test]
    fn reads_a_key_cosign_generated_with_an_empty_password() {
        let pem = fixture("cosign_generated_encrypted_empty_private.key");
        let key = SigningKey::from_pem(&pem, None).unwrap();
        let explicit = SigningKey::from_pem(&pem, Some(&Secret::new(""))).unwrap();
        assert_eq!(key.public_pem(), explicit.public_pem());
        let err = SigningKey::from_pem(&pem, Some(&Secret::new("x"))).unwrap_err();
        assert!(matches!(err, SigningError::WrongPassword), "{err}");
    }

    #[test]
    fn reads_the_pre_2_0_cosign_label() {
        let pem = fixture("legacy_cosign_encrypted_private.key");
        let key = SigningKey::from_pem(&pem, Some(&Secret::new("password"))).unwrap();
        let signature = key.sign(b"payload").unwrap();
        assert!(key.verifying_key().verifies(&signature, b"payload"));
        let err = SigningKey::from_pem(&pem, Some(&Secret::new("Password"))).unwrap_err();
        assert!(matches!(err, SigningError::WrongPassword), "{err}");
    }

    #[test]
    fn other_key_kinds_are_refused_with_what_to_do() {
        let err = SigningKey::from_pem(&fixture("sec1_p256.key"), None).unwrap_err();
        assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
        let err = SigningKey::from_pem(&fixture("pkcs8_p384.key"), None).unwrap_err();
        assert!(
            err.to_string().contains("P384") && err.to_string().contains("P-256"),
            "{err}"
        );
    }

    #[test]
    fn public_keys_are_not_signing_keys_and_vice_versa() {
        let key = SigningKey::generate().unwrap();
        let err = SigningKey::from_pem(key.public_pem().as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");
        let err = VerifyingKey::from_pem(key.private_pem().unwrap().expose().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
        let err = SigningKey::from_pem(b"garbage", None).unwrap_err();
        assert!(matches!(err, SigningError::InvalidKey { .. }), "{err}");
    }
}
