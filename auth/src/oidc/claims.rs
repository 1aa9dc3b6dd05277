//! A token: its header parsed, its key selected from the key set, its signature and claims
//! checked, and the claims read into [`OidcClaims`].

use std::collections::HashSet;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Key, KeySet};
use super::{OidcConfig, OidcError};

/// Longest token looked at; anything longer is [`OidcError::Malformed`].
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest token-supplied string (`kid`, `alg`) echoed in an error message.
pub(super) const MAX_ECHO_CHARS: usize = 64;

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

pub(super) struct Header {
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
}

pub(super) fn parse_header(token: &str) -> Result<Header, OidcError> {
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

pub(super) enum Selection {
    NotFound,
    Ambiguous,
    Mismatch,
}

impl Selection {
    pub(super) fn into_error(self, header: &Header) -> OidcError {
        let alg = format!("{:?}", header.alg);
        let kid = header.kid.as_deref().map(echo).unwrap_or_default();
        match self {
            Self::NotFound if header.kid.is_some() => OidcError::UnknownKey { kid },
            Self::NotFound | Self::Ambiguous => OidcError::AmbiguousKey { alg },
            Self::Mismatch => OidcError::KeyAlgorithmMismatch { kid, alg },
        }
    }
}

pub(super) fn select_key<'a>(set: &'a KeySet, header: &Header) -> Result<&'a Key, Selection> {
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

pub(super) fn decode(
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

pub(super) fn claims_from(raw: Value) -> Result<OidcClaims, OidcError> {
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
pub(super) fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO_CHARS).filter(|c| !c.is_control()).collect()
}
