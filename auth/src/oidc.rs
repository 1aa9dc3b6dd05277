//! OIDC bearer-token verification against the identity provider's JWKS.
//!
//! [`OidcVerifier::verify`] checks a JWT's signature with a key from the JWKS (matched by
//! `kid`), then `iss`, `aud`, `exp` and `nbf`. Only asymmetric algorithms are accepted
//! (RS256/384/512, PS256/384/512, ES256/384, EdDSA); `none` and HS* never are.
//!
//! The key set is fetched on first use and cached for [`OidcConfig::cache_ttl`]; a token whose
//! `kid` is unknown triggers one refetch, at most once per [`OidcConfig::min_refresh_interval`].
//! One fetch runs at a time: concurrent callers wait for it and share its result. When a
//! refresh fails, the last good key set stays in use (with a warning). Error messages never
//! contain the token, so they may be returned to clients.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest token looked at; anything longer is [`OidcError::Malformed`].
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest token-supplied string (`kid`, `alg`) echoed in an error message.
const MAX_ECHO_CHARS: usize = 64;

/// Where and how to verify tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Expected `iss`, compared exactly (mind trailing slashes).
    pub issuer: String,
    /// Expected `aud` (the token's `aud` may be a list containing it).
    pub audience: String,
    /// `http://` or `https://` URL of the JWKS (the `jwks_uri` of the provider's discovery document).
    pub jwks_url: String,
    /// How long a fetched key set is trusted before a background-free refresh on next use.
    pub cache_ttl: Duration,
    /// Minimum time between fetches (after unknown `kid`s, expiry or failures): anti-hammering.
    pub min_refresh_interval: Duration,
    /// Bound on one JWKS fetch, connection included.
    pub http_timeout: Duration,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    pub leeway: Duration,
}

impl OidcConfig {
    /// A config with defaults: cache 10 min, refresh at most every 30 s, 5 s HTTP timeout,
    /// 60 s leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks_url: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: jwks_url.into(),
            cache_ttl: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(30),
            http_timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(60),
        }
    }
}

/// The verified identity in a token.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcClaims {
    /// `sub`.
    pub subject: String,
    /// `iss`.
    pub issuer: String,
    /// `email`, when present as a string.
    pub email: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
    /// Entries of the `groups` and `roles` claims (each a string or an array of strings),
    /// in order, without duplicates; used by the API to map to an Enclii role.
    pub groups: Vec<String>,
    /// The whole claims object.
    pub raw: Value,
}

/// Why a token was not accepted. `Display` texts are safe to send to clients: they never
/// contain the token (`kid`/`alg` values from it are escaped and truncated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// Not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// No key with the token's `kid`, even after refreshing the key set.
    #[error("no key with id {kid:?} in the issuer's key set")]
    UnknownKey { kid: String },
    /// The token has no `kid` and the key set has not exactly one key for its algorithm.
    #[error("token has no key id and the key set does not have exactly one {alg} key")]
    AmbiguousKey { alg: String },
    /// The key named by `kid` is of another type than the token's algorithm.
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgorithmMismatch { kid: String, alg: String },
    /// The JWKS is unreachable, or not a usable key set (server-side problem).
    #[error("key set unavailable: {0}")]
    KeySetUnavailable(String),
    #[error("invalid token signature")]
    InvalidSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `none`, HS*, or anything else outside the asymmetric list.
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A required claim (`sub`, `iss`, `aud`, `exp`) is missing.
    #[error("token lacks the {0:?} claim")]
    MissingClaim(String),
    /// A claim has the wrong type.
    #[error("token claim {0:?} is invalid")]
    InvalidClaim(String),
    /// Bad [`OidcConfig`] (from [`OidcVerifier::new`]).
    #[error("invalid OIDC configuration: {0}")]
    Config(String),
}

impl OidcError {
    /// Whether the failure is on the server's side (key set unavailable or bad config) rather
    /// than the token's: an API would answer 503 rather than 401.
    #[must_use]
    pub fn is_server_side(&self) -> bool {
        matches!(self, Self::KeySetUnavailable(_) | Self::Config(_))
    }
}

/// Verifies bearer tokens; cheap to clone (clones share the key cache).
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    /// The JWKS URL without user info, for messages and logs.
    url_display: String,
    http: reqwest::Client,
    cache: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so one fetch runs at a time.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<OidcError>,
    generation: u64,
}

struct KeySet {
    keys: Vec<Key>,
    fetched_at: Instant,
    generation: u64,
}

struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.inner.config.issuer)
            .field("audience", &self.inner.config.audience)
            .field("jwks_url", &self.inner.url_display)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// Checks the config and builds the HTTP client; fetches nothing yet.
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        if config.issuer.is_empty() {
            return Err(OidcError::Config("issuer is empty".into()));
        }
        if config.audience.is_empty() {
            return Err(OidcError::Config("audience is empty".into()));
        }
        if config.http_timeout.is_zero() {
            return Err(OidcError::Config("http_timeout is zero".into()));
        }
        let mut url = reqwest::Url::parse(&config.jwks_url)
            .map_err(|e| OidcError::Config(format!("jwks_url is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OidcError::Config(format!(
                "jwks_url scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        // Keep credentials out of messages and logs.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let http = build_http_client(config.http_timeout, url.scheme() == "https")?;
        Ok(Self {
            inner: Arc::new(Inner {
                url_display: url.to_string(),
                config,
                http,
                cache: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
            }),
        })
    }

    /// The config this verifier was built from.
    #[must_use]
    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// Verifies `token` (the bare JWT, without `Bearer `) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<OidcClaims, OidcError> {
        let header = parse_header(token)?;
        let inner = &self.inner;
        let mut set = inner.usable_key_set().await?;
        let key = match select_key(&set, &header) {
            Err(Selection::NotFound) => {
                // Maybe the provider rotated its keys: refetch (rate-limited) and look again.
                set = inner.refresh(Some(set.generation)).await?;
                select_key(&set, &header)
            }
            other => other,
        }
        .map_err(|selection| selection.into_error(&header))?;
        decode(token, header.alg, &key.decoding, &inner.config, &inner.url_display)
    }
}

impl Inner {
    fn cached(&self) -> Option<Arc<KeySet>> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The cached key set if still within its TTL, else a refreshed one.
    async fn usable_key_set(&self) -> Result<Arc<KeySet>, OidcError> {
        match self.cached() {
            Some(set) if set.fetched_at.elapsed() < self.config.cache_ttl => Ok(set),
            cached => self.refresh(cached.map(|s| s.generation)).await,
        }
    }

    /// Fetches the key set unless another caller replaced `seen` (the generation the caller
    /// looked at) meanwhile, or the last fetch was less than `min_refresh_interval` ago; in
    /// those cases answers the cached set (or the last fetch error when there is none).
    async fn refresh(&self, seen: Option<u64>) -> Result<Arc<KeySet>, OidcError> {
        let mut state = self.refresh.lock().await;
        let cached = self.cached();
        if let Some(set) = &cached
            && Some(set.generation) != seen
        {
            return Ok(set.clone());
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.config.min_refresh_interval
        {
            return match (cached, &state.last_error) {
                (Some(set), _) => Ok(set),
                (None, Some(err)) => Err(err.clone()),
                (None, None) => Err(OidcError::KeySetUnavailable(format!(
                    "JWKS {} not fetched yet",
                    self.url_display
                ))),
            };
        }
        let result = self.fetch().await;
        state.last_attempt = Some(Instant::now());
        match result {
            Ok(keys) => {
                state.generation += 1;
                state.last_error = None;
                tracing::debug!(url = %self.url_display, keys = keys.len(), "fetched JWKS");
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                    generation: state.generation,
                });
                *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Some(set.clone());
                Ok(set)
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                match cached {
                    Some(set) => {
                        tracing::warn!(error = %err, "JWKS refresh failed; keeping the cached key set");
                        Ok(set)
                    }
                    None => {
                        tracing::warn!(error = %err, "JWKS fetch failed");
                        Err(err)
                    }
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, OidcError> {
        let url = &self.url_display;
        let unavailable = |what: String| OidcError::KeySetUnavailable(format!("JWKS {url} {what}"));
        let fetch = async {
            let mut response = self
                .http
                .get(&self.config.jwks_url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| unavailable(describe_http_error(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(unavailable(format!("answered HTTP {status}")));
            }
            if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
                return Err(unavailable(format!("is larger than {MAX_JWKS_BYTES} bytes")));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| unavailable(describe_http_error(&e)))?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(unavailable(format!("is larger than {MAX_JWKS_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            parse_jwks(&body).map_err(unavailable)
        };
        // The client has the same timeout; this also bounds the body read, whatever happens.
        tokio::time::timeout(self.config.http_timeout, fetch)
            .await
            .unwrap_or_else(|_| Err(unavailable(format!("timed out after {:?}", self.config.http_timeout))))
    }
}

/// A reqwest client using rustls with the `ring` provider, chosen here rather than through
/// a process-wide default. `https` URLs verify against the platform's CA certificates (an
/// error if the system has none); for `http` URLs no roots are loaded, so a redirect to
/// `https` fails verification.
fn build_http_client(timeout: Duration, https: bool) -> Result<reqwest::Client, OidcError> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let config_error = |e: &dyn fmt::Display| OidcError::Config(format!("HTTP client: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(&e))?;
    let builder = if https {
        builder.with_platform_verifier().map_err(|e| config_error(&e))?
    } else {
        builder.with_root_certificates(rustls::RootCertStore::empty())
    };
    let mut tls = builder.with_no_client_auth();
    // reqwest is built without HTTP/2.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("enclii-auth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| config_error(&e))
}

fn describe_http_error(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "is unreachable"
    } else if err.is_body() || err.is_decode() {
        "failed while reading the body"
    } else {
        "request failed"
    };
    // The root cause (e.g. "Connection refused"), without the URL reqwest adds.
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    format!("{what}: {source}")
}

/// Parses a JWKS document into the keys usable for verification; keys of other types,
/// curves or uses (including symmetric `oct` keys) are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<Value>,
    }
    let jwks: Jwks =
        serde_json::from_slice(body).map_err(|_| "is not a JSON key set ({\"keys\": [...]})".to_owned())?;
    let total = jwks.keys.len();
    let keys: Vec<Key> = jwks.keys.into_iter().filter_map(parse_jwk).collect();
    if keys.is_empty() {
        return Err(format!(
            "has no usable signing keys ({total} keys, none RSA, P-256, P-384 or Ed25519 for signatures)"
        ));
    }
    Ok(keys)
}

fn parse_jwk(value: Value) -> Option<Key> {
    #[derive(Deserialize)]
    struct Jwk {
        kty: String,
        kid: Option<String>,
        alg: Option<String>,
        #[serde(rename = "use")]
        use_: Option<String>,
        crv: Option<String>,
        n: Option<String>,
        e: Option<String>,
        x: Option<String>,
        y: Option<String>,
    }
    let jwk: Jwk = serde_json::from_value(value)
        .inspect_err(|e| tracing::debug!(error = %e, "skipping unparsable JWK"))
        .ok()?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (kind, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => (
            KeyKind::Rsa,
            DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?),
        ),
        ("EC", Some(crv @ ("P-256" | "P-384"))) => (
            if crv == "P-256" { KeyKind::P256 } else { KeyKind::P384 },
            DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?),
        ),
        ("OKP", Some("Ed25519")) => (KeyKind::Ed25519, DecodingKey::from_ed_components(jwk.x.as_deref()?)),
        _ => {
            tracing::debug!(kid = ?jwk.kid, kty = %jwk.kty, "skipping JWK of unsupported type");
            return None;
        }
    };
    let decoding = decoding
        .inspect_err(|e| tracing::debug!(kid = ?jwk.kid, error = %e, "skipping invalid JWK"))
        .ok()?;
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) if kind.fits(alg) => Some(alg),
            _ => {
                tracing::debug!(kid = ?jwk.kid, alg = name, "skipping JWK with a foreign alg");
                return None;
            }
        },
    };
    Some(Key {
        kid: jwk.kid,
        kind,
        alg,
        decoding,
    })
}

struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<Header, OidcError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        kid: Option<String>,
        crit: Option<Value>,
    }
    let malformed = |what: &str| OidcError::Malformed(what.to_owned());
    if token.is_empty() {
        return Err(malformed("empty token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("token too long"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&header).map_err(|_| malformed("header is not a JWS header"))?;
    let alg = match header.alg.as_str() {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA" => {
            Algorithm::from_str(&header.alg).map_err(|_| OidcError::UnsupportedAlgorithm(echo(&header.alg)))?
        }
        other => return Err(OidcError::UnsupportedAlgorithm(echo(other))),
    };
    if header.crit.is_some() {
        return Err(malformed("critical header extensions are not supported"));
    }
    // Checked here so that garbage is `Malformed` rather than a signature mismatch.
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| malformed("claims are not base64url"))?;
    if !serde_json::from_slice::<Value>(&claims).is_ok_and(|c| c.is_object()) {
        return Err(malformed("claims are not a JSON object"));
    }
    if signature.is_empty() || URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(malformed("signature is not base64url"));
    }
    Ok(Header { alg, kid: header.kid })
}

enum Selection {
    NotFound,
    Ambiguous,
    Mismatch,
}

impl Selection {
    fn into_error(self, header: &Header) -> OidcError {
        let alg = format!("{:?}", header.alg);
        let kid = header.kid.as_deref().map(echo).unwrap_or_default();
        match self {
            Self::NotFound if header.kid.is_some() => OidcError::UnknownKey { kid },
            Self::NotFound | Self::Ambiguous => OidcError::AmbiguousKey { alg },
            Self::Mismatch => OidcError::KeyAlgorithmMismatch { kid, alg },
        }
    }
}

fn select_key<'a>(set: &'a KeySet, header: &Header) -> Result<&'a Key, Selection> {
    match &header.kid {
        Some(kid) => {
            let mut named = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .peekable();
            if named.peek().is_none() {
                return Err(Selection::NotFound);
            }
            named.find(|k| k.fits(header.alg)).ok_or(Selection::Mismatch)
        }
        None => {
            let mut fitting = set.keys.iter().filter(|k| k.fits(header.alg));
            match (fitting.next(), fitting.next()) {
                (Some(key), None) => Ok(key),
                (None, _) => Err(Selection::NotFound),
                (Some(_), Some(_)) => Err(Selection::Ambiguous),
            }
        }
    }
}

fn decode(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    config: &OidcConfig,
    url: &str,
) -> Result<OidcClaims, OidcError> {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| match e.into_kind() {
        ErrorKind::InvalidSignature => OidcError::InvalidSignature,
        ErrorKind::ExpiredSignature => OidcError::Expired,
        ErrorKind::ImmatureSignature => OidcError::NotYetValid,
        ErrorKind::InvalidIssuer => OidcError::WrongIssuer,
        ErrorKind::InvalidAudience => OidcError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => OidcError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => OidcError::InvalidClaim(claim),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => OidcError::UnsupportedAlgorithm(format!("{alg:?}")),
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => {
            OidcError::KeySetUnavailable(format!("JWKS {url} holds a key that is not a valid {alg:?} key"))
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            OidcError::Malformed("undecodable token".into())
        }
        _ => OidcError::InvalidSignature,
    })?;
    claims_from(data.claims)
}

fn claims_from(raw: Value) -> Result<OidcClaims, OidcError> {
    let string = |name: &str| -> Result<String, OidcError> {
        match raw.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(OidcError::InvalidClaim(name.into())),
            None => Err(OidcError::MissingClaim(name.into())),
        }
    };
    let subject = string("sub")?;
    let issuer = string("iss")?;
    let expires_at = match raw.get("exp") {
        Some(exp) => exp
            .as_i64()
            // jsonwebtoken accepts fractional seconds; whole seconds are enough here.
            .or_else(|| exp.as_f64().map(|f| f as i64))
            .ok_or_else(|| OidcError::InvalidClaim("exp".into()))?,
        None => return Err(OidcError::MissingClaim("exp".into())),
    };
    let email = raw.get("email").and_then(Value::as_str).map(str::to_owned);
    let mut seen = HashSet::new();
    let groups = ["groups", "roles"]
        .iter()
        .filter_map(|name| raw.get(*name))
        .flat_map(|value| match value {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        })
        .filter(|g| seen.insert(*g))
        .map(str::to_owned)
        .collect();
    Ok(OidcClaims {
        subject,
        issuer,
        email,
        expires_at,
        groups,
        raw,
    })
}

/// A token-supplied value made safe to echo: truncated and without control characters.
fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO_CHARS).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
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
}
