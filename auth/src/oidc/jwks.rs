//! The key set: fetched from the JWKS URL, cached, refreshed at most once per
//! [`OidcConfig::min_refresh_interval`], and parsed into the keys usable for verification.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use super::{OidcConfig, OidcError};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub(super) struct Inner {
    pub(super) config: OidcConfig,
    /// The JWKS URL without user info, for messages and logs.
    pub(super) url_display: String,
    pub(super) http: reqwest::Client,
    pub(super) cache: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so one fetch runs at a time.
    pub(super) refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
pub(super) struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<OidcError>,
    generation: u64,
}

pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    fetched_at: Instant,
    pub(super) generation: u64,
}

pub(super) struct Key {
    pub(super) kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one.
    pub(super) alg: Option<Algorithm>,
    pub(super) decoding: DecodingKey,
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
    pub(super) fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl Inner {
    fn cached(&self) -> Option<Arc<KeySet>> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The cached key set if still within its TTL, else a refreshed one.
    pub(super) async fn usable_key_set(&self) -> Result<Arc<KeySet>, OidcError> {
        match self.cached() {
            Some(set) if set.fetched_at.elapsed() < self.config.cache_ttl => Ok(set),
            cached => self.refresh(cached.map(|s| s.generation)).await,
        }
    }

    /// Fetches the key set unless another caller replaced `seen` (the generation the caller
    /// looked at) meanwhile, or the last fetch was less than `min_refresh_interval` ago; in
    /// those cases answers the cached set (or the last fetch error when there is none).
    pub(super) async fn refresh(&self, seen: Option<u64>) -> Result<Arc<KeySet>, OidcError> {
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
pub(super) fn build_http_client(timeout: Duration, https: bool) -> Result<reqwest::Client, OidcError> {
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
pub(super) fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
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
