use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use super::claims::{MAX_ECHO_CHARS, claims_from, echo, parse_header};
use super::jwks::parse_jwks;
use super::*;

fn b64(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

#[test]
fn header_parsing_rejects_bad_shapes_and_algorithms() {
    let claims = b64("{}");
    for (token, expect_malformed) in [
        (String::new(), true),
        ("a.b".into(), true),
        ("a.b.c.d".into(), true),
        ("!!!.b.c".into(), true),
        (format!("{}.{claims}.sig", b64("[]")), true),
        (format!("{}.{claims}.sig", b64(r#"{"kid":"k"}"#)), true),
        (format!("{}.{claims}.", b64(r#"{"alg":"ES256"}"#)), true),
        (format!("{}.{claims}.sig", b64(r#"{"alg":"ES256","kid":7}"#)), true),
        (
            format!("{}.{claims}.sig", b64(r#"{"alg":"ES256","crit":["b64"]}"#)),
            true,
        ),
        (format!("{}.{claims}.", b64(r#"{"alg":"none"}"#)), false),
        (format!("{}.{claims}.sig", b64(r#"{"alg":"HS256"}"#)), false),
        (format!("{}.{claims}.sig", b64(r#"{"alg":"rs256"}"#)), false),
    ] {
        let err = parse_header(&token).err().expect("rejected");
        assert_eq!(
            matches!(err, OidcError::Malformed(_)),
            expect_malformed,
            "{token}: {err}"
        );
        if !expect_malformed {
            assert!(matches!(err, OidcError::UnsupportedAlgorithm(_)), "{err}");
        }
    }
    let header = parse_header(&format!(
        "{}.{claims}.sig",
        b64(r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#)
    ))
    .unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some("k1"));
}

#[test]
fn echoed_values_are_bounded_and_printable() {
    let long = format!("{}\n\u{1b}[31m", "k".repeat(200));
    let echoed = echo(&long);
    assert_eq!(echoed, "k".repeat(MAX_ECHO_CHARS));
    assert_eq!(echo("a\u{7}b"), "ab");
}

#[test]
fn jwks_parsing_skips_unusable_keys() {
    let body = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "k256", "crv": "secp256k1", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
        "not an object",
    ]});
    let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
    assert_eq!(kids, ["rsa", "ed"]);
    assert_eq!(keys[0].alg, Some(Algorithm::RS256));
    assert!(keys[0].fits(Algorithm::RS256) && !keys[0].fits(Algorithm::PS256));
    assert!(keys[1].fits(Algorithm::EdDSA) && !keys[1].fits(Algorithm::ES256));

    for bad in [&b"<html>"[..], b"{}", b"[]", br#"{"keys": {}}"#, br#"{"keys": []}"#] {
        assert!(parse_jwks(bad).is_err());
    }
}

#[test]
fn groups_merge_string_and_array_claims() {
    let claims = claims_from(serde_json::json!({
        "sub": "u1", "iss": "https://idp", "exp": 1_900_000_000, "email": "a@b.c",
        "groups": ["admins", "devs", 3], "roles": "devs"
    }))
    .unwrap();
    assert_eq!(claims.groups, ["admins", "devs"]);
    assert_eq!(claims.email.as_deref(), Some("a@b.c"));
    assert_eq!(claims.expires_at, 1_900_000_000);

    let claims = claims_from(serde_json::json!({
        "sub": "u1", "iss": "https://idp", "exp": 1.9e9, "roles": "ops", "email": false
    }))
    .unwrap();
    assert_eq!(claims.groups, ["ops"]);
    assert_eq!(claims.email, None);

    let err = claims_from(serde_json::json!({"sub": 1, "iss": "i", "exp": 1})).unwrap_err();
    assert_eq!(err, OidcError::InvalidClaim("sub".into()));
}

#[test]
fn config_is_checked() {
    let ok = OidcConfig::new("https://idp", "enclii", "https://idp/jwks");
    let verifier = OidcVerifier::new(ok.clone()).expect("https client builds");
    assert_eq!(verifier.config(), &ok);
    for bad in [
        OidcConfig {
            jwks_url: "ftp://idp/jwks".into(),
            ..ok.clone()
        },
        OidcConfig {
            jwks_url: "not a url".into(),
            ..ok.clone()
        },
        OidcConfig {
            issuer: String::new(),
            ..ok.clone()
        },
        OidcConfig {
            audience: String::new(),
            ..ok.clone()
        },
        OidcConfig {
            http_timeout: Duration::ZERO,
            ..ok.clone()
        },
    ] {
        assert!(matches!(OidcVerifier::new(bad), Err(OidcError::Config(_))));
    }
}

#[test]
fn credentials_in_the_url_stay_out_of_messages() {
    let config = OidcConfig::new("i", "a", "https://user:hunter2@idp.example/jwks");
    let verifier = OidcVerifier::new(config).unwrap();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains("hunter2") && !debug.contains("user"), "{debug}");
    assert!(debug.contains("https://idp.example/jwks"));
}

#[test]
fn verifier_is_send_sync() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<OidcVerifier>();
}
