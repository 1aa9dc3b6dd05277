//! Authentication building blocks for Enclii.
//!
//! - [`oidc`]: verify OIDC bearer tokens (JWTs) against an identity provider's JWKS.
//! - [`token`]: personal access tokens (generate, parse, hash, verify).
//! - [`github_signature`]: GitHub webhook `X-Hub-Signature-256` checks.
//! - [`constant_time_eq`]: comparison of secrets without timing leaks.

pub mod github_signature;
pub mod oidc;
pub mod token;

use subtle::ConstantTimeEq;

/// Compares two byte strings in time independent of their contents.
///
/// Only the lengths may leak (slices of different lengths are unequal at once), so compare
/// values of a fixed, public length such as digests.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Lowercase hex encoding.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Hex decoding (either case); `None` on odd length or a non-hex character.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0xab, 0xff];
        let hex = hex_encode(&bytes);
        assert_eq!(hex, "00017f80abff");
        assert_eq!(hex_decode(&hex).unwrap(), bytes);
        assert_eq!(hex_decode("ABff").unwrap(), [0xab, 0xff]);
        assert_eq!(hex_decode(""), Some(vec![]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("+1"), None);
    }
}
