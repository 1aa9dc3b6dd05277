//! `OidcVerifier` against a real JWKS server on 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use enclii_auth::oidc::{OidcConfig, OidcError, OidcVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use rand::RngCore as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/realms/enclii";
const AUDIENCE: &str = "enclii-api";

// ---------------------------------------------------------------- keys

struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(kid: &str) -> TestKey {
    let secret = p256::SecretKey::random(&mut OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let point = secret.public_key().to_encoded_point(false);
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(der.as_bytes()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
    }
}

fn rsa_key(kid: &str) -> TestKey {
    let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        // No "alg": the verifier must then accept any RSA algorithm for it.
        jwk: json!({"kty": "RSA", "kid": kid,
                    "n": b64(private.n().to_bytes_be()), "e": b64(private.e().to_bytes_be())}),
    }
}

fn ed_key(kid: &str) -> TestKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing).unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                    "x": b64(signing.verifying_key().to_bytes())}),
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

// ---------------------------------------------------------------- tokens

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

fn claims() -> Value {
    json!({
        "sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600,
        "email": "dev@example.com", "groups": ["enclii-admins", "devs"], "roles": "devs",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn sign_with_kid(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn sign(key: &TestKey, claims: &Value) -> String {
    sign_with_kid(key, Some(&key.kid), claims)
}

// ---------------------------------------------------------------- server

#[derive(Clone)]
enum Reply {
    Ok(String),
    Status(StatusCode),
    Body(&'static str),
}

struct ServerState {
    reply: Mutex<Reply>,
    delay: Mutex<Duration>,
    hits: AtomicUsize,
}

struct JwksServer {
    url: String,
    state: Arc<ServerState>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let state = Arc::new(ServerState {
            reply: Mutex::new(Reply::Ok(body)),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn reply(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }

    fn delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> OidcConfig {
        config_for(&self.url)
    }

    fn verifier(&self) -> OidcVerifier {
        OidcVerifier::new(self.config()).unwrap()
    }
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let reply = state.reply.lock().unwrap().clone();
    match reply {
        Reply::Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Reply::Status(status) => (status, "{}").into_response(),
        Reply::Body(body) => body.into_response(),
    }
}

fn config_for(url: &str) -> OidcConfig {
    OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: url.into(),
        cache_ttl: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(60),
        http_timeout: Duration::from_secs(2),
        leeway: Duration::from_secs(5),
    }
}

/// Verifies `token`, expecting an error; checks its message does not leak the token.
async fn reject(verifier: &OidcVerifier, token: &str) -> OidcError {
    let err = verifier.verify(token).await.expect_err("token accepted");
    let message = err.to_string();
    if token.len() > 8 {
        assert!(!message.contains(token), "message leaks the token: {message}");
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!message.contains(part), "message leaks a token part: {message}");
        }
    }
    err
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn valid_tokens_yield_claims_for_each_key_type() {
    let (ec, rsa, ed) = (ec_key("ec-1"), rsa_key("rsa-1"), ed_key("ed-1"));
    let server = JwksServer::start(jwks(&[&ec, &rsa, &ed])).await;
    let verifier = server.verifier();

    for key in [&ec, &rsa, &ed] {
        let claims = verifier.verify(&sign(key, &claims())).await.unwrap();
        assert_eq!(claims.subject, "user-1");
        assert_eq!(claims.issuer, ISSUER);
        assert_eq!(claims.email.as_deref(), Some("dev@example.com"));
        assert_eq!(claims.groups, ["enclii-admins", "devs"]);
        assert!((claims.expires_at - now() - 600).abs() < 5);
        assert_eq!(claims.raw["aud"], AUDIENCE);
    }
    // The RSA JWK names no alg, so any RSA algorithm goes.
    let mut header = Header::new(Algorithm::RS512);
    header.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&header, &claims(), &rsa.encoding).unwrap();
    verifier.verify(&token).await.unwrap();
    // The EC JWK says ES256; other claims shapes are fine too.
    let minimal = json!({"sub": "u", "iss": ISSUER, "aud": [AUDIENCE, "other"], "exp": now() + 60});
    let claims = verifier.verify(&sign(&ec, &minimal)).await.unwrap();
    assert_eq!((claims.email, claims.groups), (None, Vec::<String>::new()));
    assert_eq!(server.hits(), 1, "the key set is cached");
}

#[tokio::test]
async fn time_issuer_and_audience_are_checked() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let verifier = server.verifier();
    let cases = [
        (with(claims(), "exp", json!(now() - 600)), OidcError::Expired),
        (with(claims(), "nbf", json!(now() + 600)), OidcError::NotYetValid),
        (
            with(claims(), "iss", json!("https://evil.test")),
            OidcError::WrongIssuer,
        ),
        (
            with(claims(), "iss", json!(format!("{ISSUER}/"))),
            OidcError::WrongIssuer,
        ),
        (with(claims(), "aud", json!("another-app")), OidcError::WrongAudience),
        (with(claims(), "aud", json!(["a", "b"])), OidcError::WrongAudience),
    ];
    for (claims, expected) in cases {
        assert_eq!(reject(&verifier, &sign(&key, &claims)).await, expected);
    }
    for missing in ["sub", "iss", "aud", "exp"] {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(missing);
        let err = reject(&verifier, &sign(&key, &claims)).await;
        assert_eq!(err, OidcError::MissingClaim(missing.into()));
    }
    // Within the leeway.
    let token = sign(&key, &with(claims(), "exp", json!(now() - 2)));
    verifier.verify(&token).await.unwrap();
}

#[tokio::test]
async fn a_signature_by_another_key_with_the_same_kid_is_rejected() {
    let (real, impostor) = (ec_key("k1"), ec_key("k1"));
    let server = JwksServer::start(jwks(&[&real])).await;
    let verifier = server.verifier();
    let forged = sign(&impostor, &claims());
    assert_eq!(reject(&verifier, &forged).await, OidcError::InvalidSignature);

    // Tampered claims under a genuine signature.
    let genuine = sign(&real, &claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    let evil_claims = b64(with(claims(), "sub", json!("admin")).to_string());
    let tampered = format!("{}.{evil_claims}.{}", parts[0], parts[2]);
    assert_eq!(reject(&verifier, &tampered).await, OidcError::InvalidSignature);
    // A genuine signature with a truncated encoding.
    let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
    assert!(matches!(
        reject(&verifier, &truncated).await,
        OidcError::InvalidSignature | OidcError::Malformed(_)
    ));
}

#[tokio::test]
async fn an_unknown_kid_refetches_and_finds_a_rotated_key() {
    let (old, new) = (ec_key("2024"), ed_key("2025"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let verifier = OidcVerifier::new(OidcConfig {
        min_refresh_interval: Duration::ZERO,
        ..server.config()
    })
    .unwrap();

    verifier.verify(&sign(&old, &claims())).await.unwrap();
    assert_eq!(server.hits(), 1);

    server.reply(Reply::Ok(jwks(&[&new])));
    let claims = verifier.verify(&sign(&new, &claims())).await.unwrap();
    assert_eq!(claims.subject, "user-1");
    assert_eq!(server.hits(), 2);
    verifier.verify(&sign(&new, &self::claims())).await.unwrap();
    assert_eq!(server.hits(), 2, "a known kid needs no fetch");

    // The retired key is gone after the refresh.
    let err = reject(&verifier, &sign(&old, &self::claims())).await;
    assert_eq!(err, OidcError::UnknownKey { kid: "2024".into() });
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_min_refresh_interval() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let verifier = OidcVerifier::new(OidcConfig {
        min_refresh_interval: Duration::from_secs(1),
        ..server.config()
    })
    .unwrap();
    verifier.verify(&sign(&key, &claims())).await.unwrap();
    assert_eq!(server.hits(), 1);

    // Right after a fetch: no refetch at all.
    let ghost = sign_with_kid(&key, Some("ghost"), &claims());
    let err = reject(&verifier, &ghost).await;
    assert_eq!(err, OidcError::UnknownKey { kid: "ghost".into() });
    assert_eq!(server.hits(), 1);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    reject(&verifier, &ghost).await;
    assert_eq!(server.hits(), 2, "one refetch once the interval passed");
    reject(&verifier, &ghost).await;
    let other = sign_with_kid(&key, Some("ghost-2"), &claims());
    reject(&verifier, &other).await;
    assert_eq!(server.hits(), 2, "no second refetch within the interval");
}

#[tokio::test]
async fn concurrent_verifies_share_one_fetch() {
    let (key, rotated) = (ec_key("k1"), ec_key("k2"));
    let server = JwksServer::start(jwks(&[&key])).await;
    server.delay(Duration::from_millis(200));
    let verifier = OidcVerifier::new(OidcConfig {
        min_refresh_interval: Duration::ZERO,
        ..server.config()
    })
    .unwrap();

    let token = sign(&key, &claims());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.hits(), 1, "cold cache: one fetch for all");

    // Unknown kid in many requests at once: still a single refetch.
    server.reply(Reply::Ok(jwks(&[&key, &rotated])));
    let token = sign(&rotated, &claims());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.hits(), 2, "unknown kid: one refetch for all");
}

#[tokio::test]
async fn an_unreachable_jwks_is_key_set_unavailable() {
    let key = ec_key("k1");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/jwks");
    let verifier = OidcVerifier::new(config_for(&url)).unwrap();
    let token = sign(&key, &claims());
    let err = reject(&verifier, &token).await;
    let OidcError::KeySetUnavailable(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains(&url), "{message}");
    assert!(err.is_server_side());
}

#[tokio::test]
async fn a_hanging_jwks_fails_within_http_timeout() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    server.delay(Duration::from_secs(10));
    let verifier = OidcVerifier::new(OidcConfig {
        http_timeout: Duration::from_millis(300),
        ..server.config()
    })
    .unwrap();
    let started = Instant::now();
    let err = reject(&verifier, &sign(&key, &claims())).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    let OidcError::KeySetUnavailable(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains(&server.url) && message.contains("timed out"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_key_set_documents_are_key_set_unavailable() {
    let key = ec_key("k1");
    let hmac_only = r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0"}]}"#;
    for reply in [
        Reply::Body("<html>not json</html>"),
        Reply::Body(""),
        Reply::Body(r#"{"keys":[]}"#),
        Reply::Body(r#"{"nokeys":true}"#),
        Reply::Body(hmac_only),
        Reply::Status(StatusCode::NOT_FOUND),
        Reply::Status(StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let server = JwksServer::start(String::new()).await;
        server.reply(reply);
        let verifier = server.verifier();
        let err = reject(&verifier, &sign(&key, &claims())).await;
        let OidcError::KeySetUnavailable(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains(&server.url), "{message}");

        // Failures are rate-limited too: the next verify answers at once, without a fetch.
        let err = reject(&verifier, &sign(&key, &claims())).await;
        assert!(matches!(err, OidcError::KeySetUnavailable(_)));
        assert_eq!(server.hits(), 1);
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_key_set() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let verifier = OidcVerifier::new(OidcConfig {
        cache_ttl: Duration::from_millis(100),
        min_refresh_interval: Duration::ZERO,
        ..server.config()
    })
    .unwrap();
    verifier.verify(&sign(&key, &claims())).await.unwrap();

    server.reply(Reply::Status(StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(Duration::from_millis(150)).await;
    verifier.verify(&sign(&key, &claims())).await.unwrap();
    assert_eq!(server.hits(), 2, "the expired set was refreshed (and failed)");

    server.reply(Reply::Body("garbage"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    verifier.verify(&sign(&key, &claims())).await.unwrap();
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn none_and_hmac_tokens_are_rejected() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let verifier = server.verifier();

    let payload = b64(claims().to_string());
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"k1"}"#));
    assert_eq!(
        reject(&verifier, &none).await,
        OidcError::UnsupportedAlgorithm("none".into())
    );

    // HS256, keyed with the public JWK: the classic algorithm-confusion attack.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let secret = EncodingKey::from_secret(key.jwk.to_string().as_bytes());
    let hs256 = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert_eq!(
        reject(&verifier, &hs256).await,
        OidcError::UnsupportedAlgorithm("HS256".into())
    );
    assert_eq!(server.hits(), 0, "rejected before any fetch");
}

#[tokio::test]
async fn malformed_tokens_are_malformed() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let verifier = server.verifier();
    let valid = sign(&key, &claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let long = "a".repeat(20_000);
    for token in [
        "",
        "a.b",
        "random",
        "a.b.c",
        "...",
        "Bearer abc",
        &format!("Bearer {valid}"),
        &format!("{valid}.extra"),
        &format!("{}.!!!.{}", parts[0], parts[2]),
        &format!("{}.{}", parts[0], parts[1]),
        &format!("{}..{}", parts[0], parts[2]),
        &long,
    ] {
        let err = reject(&verifier, token).await;
        assert!(matches!(err, OidcError::Malformed(_)), "{token:.40}: {err}");
    }
    // Claims that are not a JSON object.
    let not_object = format!("{}.{}.{}", parts[0], b64("[1,2]"), parts[2]);
    assert!(matches!(reject(&verifier, &not_object).await, OidcError::Malformed(_)));
}

#[tokio::test]
async fn tokens_without_kid_need_exactly_one_fitting_key() {
    let (ec, rsa) = (ec_key("ec"), rsa_key("rsa"));
    let server = JwksServer::start(jwks(&[&ec, &rsa])).await;
    let verifier = server.verifier();
    // One EC key and one RSA key: an ES256 token without kid has exactly one candidate.
    let claims = verifier.verify(&sign_with_kid(&ec, None, &claims())).await.unwrap();
    assert_eq!(claims.subject, "user-1");

    let ec2 = ec_key("ec2");
    let server = JwksServer::start(jwks(&[&ec, &ec2])).await;
    let verifier = server.verifier();
    let err = reject(&verifier, &sign_with_kid(&ec, None, &self::claims())).await;
    assert_eq!(err, OidcError::AmbiguousKey { alg: "ES256".into() });
}

#[tokio::test]
async fn a_kid_naming_a_key_of_another_type_is_rejected() {
    let (ec, rsa) = (ec_key("ec"), rsa_key("rsa"));
    let server = JwksServer::start(jwks(&[&ec, &rsa])).await;
    let verifier = server.verifier();
    let err = reject(&verifier, &sign_with_kid(&ec, Some("rsa"), &claims())).await;
    assert_eq!(
        err,
        OidcError::KeyAlgorithmMismatch {
            kid: "rsa".into(),
            alg: "ES256".into()
        }
    );
    // An RSA token under an ES256-only JWK.
    let err = reject(&verifier, &sign_with_kid(&rsa, Some("ec"), &claims())).await;
    assert!(matches!(err, OidcError::KeyAlgorithmMismatch { .. }));
}
