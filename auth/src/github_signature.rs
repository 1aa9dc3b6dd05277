//! GitHub webhook signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `body` under `secret`.
#[must_use]
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    crate::hex_encode(&mac(secret, body).finalize().into_bytes())
}

/// Checks a GitHub `X-Hub-Signature-256` header value (`sha256=<64 hex digits>`) against
/// `body`, in constant time. Any malformed header gives `false`.
#[must_use]
pub fn verify_github_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 {
        return false;
    }
    let Some(expected) = crate::hex_decode(hex) else {
        return false;
    };
    // `verify_slice` compares in constant time.
    mac(secret, body).verify_slice(&expected).is_ok()
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const PAYLOAD: &[u8] = b"Hello, World!";
    const SIGNATURE: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn matches_githubs_documented_test_vector() {
        assert_eq!(hmac_sha256_hex(SECRET, PAYLOAD), SIGNATURE);
        assert!(verify_github_signature(SECRET, PAYLOAD, &format!("sha256={SIGNATURE}")));
        assert!(verify_github_signature(
            SECRET,
            PAYLOAD,
            &format!("sha256={}", SIGNATURE.to_uppercase())
        ));
    }

    #[test]
    fn rejects_wrong_secret_body_or_signature() {
        let header = format!("sha256={SIGNATURE}");
        assert!(!verify_github_signature(b"another secret", PAYLOAD, &header));
        assert!(!verify_github_signature(SECRET, b"Hello, World?", &header));
        let mut flipped = SIGNATURE.to_owned();
        flipped.replace_range(63.., "f");
        assert!(!verify_github_signature(SECRET, PAYLOAD, &format!("sha256={flipped}")));
    }

    #[test]
    fn rejects_malformed_headers() {
        for header in [
            "",
            "sha256=",
            SIGNATURE,
            &format!("sha1={SIGNATURE}"),
            &format!("SHA256={SIGNATURE}"),
            &format!("sha256={}", &SIGNATURE[..62]),
            &format!("sha256={SIGNATURE}00"),
            &format!("sha256={}zz", &SIGNATURE[..62]),
            &format!("sha256= {SIGNATURE}"),
            "sha256=é57107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        ] {
            assert!(!verify_github_signature(SECRET, PAYLOAD, header), "accepted {header:?}");
        }
    }
}
