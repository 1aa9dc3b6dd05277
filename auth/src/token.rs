//! Personal access tokens (PATs).
//!
//! A PAT reads `enclii_pat_<id>_<secret>`: `id` (12 base62 characters) is public and is the
//! lookup key; `secret` (43 base62 characters, 256 random bits) is shown to the user once.
//! Store only [`hash`]`(secret)` next to the id and check presented tokens with [`verify`].
//!
//! ```
//! use enclii_auth::token;
//! let new = token::generate();
//! // store (new.id, new.secret_hash); give new.plaintext to the user.
//! let (id, secret) = token::parse(&new.plaintext).unwrap();
//! assert_eq!(id, new.id);
//! assert!(token::verify(secret, &new.secret_hash));
//! ```

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

/// Every PAT starts with this (lets the API tell PATs from JWTs, and secret scanners find them).
pub const PREFIX: &str = "enclii_pat_";
/// Length of the public id part.
pub const ID_LEN: usize = 12;
/// Length of the secret part: 43 base62 characters carry 256 bits.
pub const SECRET_LEN: usize = 43;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated token.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The full token, `enclii_pat_<id>_<secret>`: show it once, never store it.
    pub plaintext: String,
    /// The public id part, to store and look the token up by.
    pub id: String,
    /// [`hash`] of the secret part: the only secret-derived value to store.
    pub secret_hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("plaintext", &"<redacted>")
            .field("id", &self.id)
            .field("secret_hash", &self.secret_hash)
            .finish()
    }
}

/// Generates a new token from the thread-local CSPRNG.
#[must_use]
pub fn generate() -> NewToken {
    let id = random_base62(ID_LEN);
    let secret = random_base62(SECRET_LEN);
    NewToken {
        plaintext: format!("{PREFIX}{id}_{secret}"),
        secret_hash: hash(&secret),
        id,
    }
}

/// Splits a presented token into `(id, secret)`; `None` unless it has exactly the shape
/// [`generate`] produces.
#[must_use]
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_LEN && secret.len() == SECRET_LEN && is_base62(id) && is_base62(secret)).then_some((id, secret))
}

/// SHA-256 of the secret part, lowercase hex (64 characters).
#[must_use]
pub fn hash(secret: &str) -> String {
    crate::hex_encode(&Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored_hash` (hex, either case), compared in constant time.
#[must_use]
pub fn verify(secret: &str, stored_hash: &str) -> bool {
    let Some(stored) = crate::hex_decode(stored_hash) else {
        return false;
    };
    crate::constant_time_eq(&Sha256::digest(secret.as_bytes()), &stored)
}

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect()
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_verify() {
        let new = generate();
        assert!(new.plaintext.starts_with(PREFIX));
        assert_eq!(new.plaintext.len(), PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        let (id, secret) = parse(&new.plaintext).expect("parses");
        assert_eq!(id, new.id);
        assert_eq!(new.secret_hash, hash(secret));
        assert_eq!(new.secret_hash.len(), 64);
        assert!(verify(secret, &new.secret_hash));
        assert!(verify(secret, &new.secret_hash.to_uppercase()));
        assert!(!new.secret_hash.contains(secret));
    }

    #[test]
    fn tokens_are_unique() {
        let a = generate();
        let b = generate();
        assert_ne!(a.id, b.id);
        assert_ne!(a.plaintext, b.plaintext);
        assert_ne!(a.secret_hash, b.secret_hash);
    }

    #[test]
    fn debug_redacts_the_plaintext() {
        let new = generate();
        let (_, secret) = parse(&new.plaintext).unwrap();
        let debug = format!("{new:?}");
        assert!(!debug.contains(secret));
        assert!(debug.contains(&new.id));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_rejects_wrong_secrets_and_bad_hashes() {
        let new = generate();
        let (_, secret) = parse(&new.plaintext).unwrap();
        let other = generate();
        let (_, other_secret) = parse(&other.plaintext).unwrap();
        assert!(!verify(other_secret, &new.secret_hash));
        assert!(!verify("", &new.secret_hash));
        assert!(!verify(secret, ""));
        assert!(!verify(secret, &new.secret_hash[..62]));
        assert!(!verify(secret, &format!("{}zz", &new.secret_hash[..62])));
        assert!(!verify(secret, secret));
    }

    #[test]
    fn parse_rejects_other_shapes() {
        let new = generate();
        let (id, secret) = parse(&new.plaintext).unwrap();
        let long_id = format!("{id}x");
        let bad_char = format!("{}-", &secret[..SECRET_LEN - 1]);
        for token in [
            String::new(),
            PREFIX.to_owned(),
            format!("{PREFIX}{id}"),
            format!("{PREFIX}{id}_"),
            format!("{PREFIX}_{secret}"),
            format!("{PREFIX}{long_id}_{secret}"),
            format!("{PREFIX}{id}_{secret}x"),
            format!("{PREFIX}{id}_{bad_char}"),
            format!("{PREFIX}{id}_{secret}_x"),
            format!("enclii_pak_{id}_{secret}"),
            format!(" {}", new.plaintext),
            format!("{}\n", new.plaintext),
            format!("{id}_{secret}"),
        ] {
            assert_eq!(parse(&token), None, "parsed {token:?}");
        }
    }
}
