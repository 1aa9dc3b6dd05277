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

mod claims;
mod jwks;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use self::claims::OidcClaims;
use self::claims::{Selection, decode, parse_header, select_key};
use self::jwks::{Inner, RefreshState, build_http_client};

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
