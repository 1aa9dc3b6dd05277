//! OIDC bearer tokens through the API, against a real JWKS server on 127.0.0.1: a valid token
//! authenticates its subject (whose roles come from role bindings); an expired token, a token
//! signed by another key and an unreachable key set each get a clear 401.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use enclii_auth::oidc::{OidcConfig, OidcVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{Db, api_configured};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "enclii";

struct Key {
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> Key {
    let seed: [u8; 32] = rand::random();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing).unwrap();
    Key {
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                    "x": URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes())}),
    }
}

fn token(key: &Key, kid: &str, subject: &str, expires_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + expires_in});
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

/// Serves `{"keys": [jwk]}` on a free port.
async fn jwks_server(jwk: serde_json::Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = json!({ "keys": [jwk] });
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || std::future::ready(axum::Json(body.clone()))),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

fn verifier(jwks_url: String) -> OidcVerifier {
    let mut config = OidcConfig::new(ISSUER, AUDIENCE, jwks_url);
    config.http_timeout = Duration::from_secs(2);
    config.min_refresh_interval = Duration::from_millis(10);
    OidcVerifier::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_users_get_the_roles_bound_to_their_subject() {
    let signing = key("k1");
    let url = jwks_server(signing.jwk.clone()).await;
    let config = enclii_api::ApiConfig {
        oidc: Some(verifier(url)),
        ..Default::default()
    };
    let t = api_configured(Db::Sqlite, config).await;
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    let alice = token(&signing, "k1", "alice", 300);

    let r = t.call(&alice, "GET", "/v1/projects/shop", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "authenticated, but no role yet: {r:?}");
    assert!(r.body["detail"].as_str().unwrap().contains("`oidc:alice` has no role"));
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/members/oidc:alice",
            Some(r#"{"role":"Developer"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        t.call(&alice, "GET", "/v1/projects/shop", None).await.status,
        StatusCode::OK
    );
    let me = t.call(&alice, "GET", "/v1/whoami", None).await;
    assert_eq!(
        (me.body["subject"].as_str(), &me.body["scopes"]),
        (Some("oidc:alice"), &json!(null))
    );
    let r = t
        .call(&alice, "PATCH", "/v1/projects/shop", Some(r#"{"name":"x"}"#))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "Developers do not edit projects");

    let expired = token(&signing, "k1", "alice", -600);
    let r = t.call(&expired, "GET", "/v1/projects/shop", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );
    let forged = token(&key("k1"), "k1", "alice", 300);
    let r = t.call(&forged, "GET", "/v1/projects/shop", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    assert!(!r.body.to_string().contains(&forged), "the token is never echoed");
    let r = t.call("not.a.jwt", "GET", "/v1/projects/shop", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_set_is_a_clear_401() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = enclii_api::ApiConfig {
        oidc: Some(verifier(format!("http://{closed}/jwks"))),
        ..Default::default()
    };
    let t = api_configured(Db::Sqlite, config).await;
    let r = t
        .call(&token(&key("k1"), "k1", "alice", 300), "GET", "/v1/projects", None)
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("oidc_unavailable")),
        "{r:?}"
    );
    assert!(r.body["hint"].as_str().unwrap().contains("personal access token"));
    // Without OIDC configured, a JWT is refused with the way forward.
    let t = support::api(Db::Sqlite).await;
    let r = t
        .call(&token(&key("k1"), "k1", "alice", 300), "GET", "/v1/projects", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["hint"].as_str().unwrap().contains("ENCLII_OIDC_ISSUER"));
}
