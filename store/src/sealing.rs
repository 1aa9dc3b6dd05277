//! Lockbox sealing: envelope encryption of secret values. Each value is encrypted with its own
//! random data key (AES-256-GCM); the data key is encrypted ("wrapped") with the master key. The
//! secret's place (project/environment/service/name/version) is bound in as associated data, so a
//! sealed value copied to another row fails to open. Rotating the master key means re-wrapping
//! data keys only.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

use crate::error::{Result, StoreError};

const VERSION: &str = "v1";
const NONCE: usize = 12;

/// The master key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Parses a base64 (standard) encoding of 32 bytes, e.g. from `ENCLII_MASTER_KEY`.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "the master key is not valid base64".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("the master key must be 32 bytes, got {}", b.len()))?;
        Ok(Self(key))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }

    /// Seals `value`, bound to `binding`.
    pub fn seal(&self, value: &[u8], binding: &str) -> Result<String> {
        let mut data_key = [0u8; 32];
        rand::rng().fill_bytes(&mut data_key);
        let (key_nonce, value_nonce) = (random_nonce(), random_nonce());
        let wrapped = self
            .cipher()
            .encrypt(
                &Nonce::from(key_nonce),
                Payload {
                    msg: &data_key,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Sealing("wrapping the data key failed".into()))?;
        let ciphertext = Aes256Gcm::new(&Key::<Aes256Gcm>::from(data_key))
            .encrypt(
                &Nonce::from(value_nonce),
                Payload {
                    msg: value,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Sealing("encrypting the value failed".into()))?;
        Ok(format!(
            "{VERSION}:{}:{}:{}:{}",
            STANDARD.encode(key_nonce),
            STANDARD.encode(wrapped),
            STANDARD.encode(value_nonce),
            STANDARD.encode(ciphertext)
        ))
    }

    /// Opens what [`seal`](Self::seal) produced for the same binding.
    pub fn open(&self, sealed: &str, binding: &str) -> Result<Vec<u8>> {
        let bad = |why: &str| StoreError::Sealing(why.to_string());
        let parts: Vec<&str> = sealed.split(':').collect();
        let [VERSION, key_nonce, wrapped, value_nonce, ciphertext] = parts[..] else {
            return Err(bad("unknown sealing format"));
        };
        let decode = |part: &str| STANDARD.decode(part).map_err(|_| bad("corrupt sealed value"));
        let (key_nonce, wrapped, value_nonce, ciphertext) = (
            decode(key_nonce)?,
            decode(wrapped)?,
            decode(value_nonce)?,
            decode(ciphertext)?,
        );
        let nonce = |bytes: Vec<u8>| <[u8; NONCE]>::try_from(bytes).map_err(|_| bad("corrupt sealed value"));
        let (key_nonce, value_nonce) = (nonce(key_nonce)?, nonce(value_nonce)?);
        let data_key = self
            .cipher()
            .decrypt(
                &Nonce::from(key_nonce),
                Payload {
                    msg: &wrapped,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| bad("the master key does not open it (wrong key, or the row was moved or altered)"))?;
        let data_key = <[u8; 32]>::try_from(data_key).map_err(|_| bad("corrupt data key"))?;
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(data_key))
            .decrypt(
                &Nonce::from(value_nonce),
                Payload {
                    msg: &ciphertext,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| bad("the value was altered"))
    }
}

fn random_nonce() -> [u8; NONCE] {
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_binding() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"hunter2", "p/prod/api/DB/1").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed, "p/prod/api/DB/1").unwrap(), b"hunter2");
        assert!(key.open(&sealed, "p/prod/api/DB/2").is_err(), "moved row");
        assert!(
            MasterKey::generate().open(&sealed, "p/prod/api/DB/1").is_err(),
            "other key"
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open(&tampered, "p/prod/api/DB/1").is_err());
        assert!(key.open("garbage", "x").is_err());
    }

    #[test]
    fn each_seal_uses_fresh_randomness() {
        let key = MasterKey::generate();
        assert_ne!(key.seal(b"v", "b").unwrap(), key.seal(b"v", "b").unwrap());
    }

    #[test]
    fn master_keys_parse_from_base64_and_never_print() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.0, key.0);
        assert!(MasterKey::from_base64("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
