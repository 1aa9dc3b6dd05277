//! HTTPS for Junctions: the certificates the TLS listener serves, picked by SNI, and the HTTP-01
//! answers the plain listener gives the ACME server.
//!
//! Certificates come from two places: the store (one per host, issued by ACME; the server
//! replaces the whole set whenever the store's changes — see `enclii server`'s TLS module) and
//! certificate files given at start (`ENCLII_ROUTER_TLS_CERT`, typically a wildcard for preview
//! hosts), matched against the host by the names the certificate holds. A host's own certificate
//! wins over a file's. A TLS request for a routed host without any certificate is reported to
//! whoever listens on [`Certificates::misses`] (the server orders one on first use, rate-limited)
//! and the handshake fails meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;

/// The HTTP-01 answers (`/.well-known/acme-challenge/<token>`), wherever the order keeps them.
#[async_trait]
pub trait ChallengeAnswers: Send + Sync {
    /// The key authorization for `token`, while its order waits for validation.
    async fn answer(&self, token: &str) -> Option<String>;
}

/// A certificate and key that would not load, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct CertificateError {
    what: String,
    why: String,
}

impl CertificateError {
    fn new(what: &str, why: impl fmt::Display) -> Self {
        Self {
            what: what.to_string(),
            why: why.to_string(),
        }
    }
}

/// A certificate file's chain and key, with the names it is valid for checked per host.
struct FileCertificate {
    key: Arc<CertifiedKey>,
}

impl FileCertificate {
    fn serves(&self, host: &str) -> bool {
        let Ok(name) = ServerName::try_from(host) else {
            return false;
        };
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// What the TLS listener serves. Cheap to share; lookups never block on I/O.
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    files: Vec<FileCertificate>,
    misses: mpsc::Sender<String>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts = self.by_host.read().map(|h| h.len()).unwrap_or_default();
        f.debug_struct("Certificates")
            .field("hosts", &hosts)
            .field("files", &self.files.len())
            .finish()
    }
}

/// PEM chain (leaf first) and PEM private key → what rustls serves.
pub fn certified_key(
    provider: &CryptoProvider,
    what: &str,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::new(what, format!("the certificate chain is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(CertificateError::new(what, "no CERTIFICATE block in the chain"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertificateError::new(what, format!("the private key is not PEM: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        CertificateError::new(
            what,
            format!("the key does not match the certificate or is not supported: {e}"),
        )
    })?;
    Ok(Arc::new(key))
}

impl Certificates {
    /// With the certificate files' (chain, key) PEM pairs; the receiver gets hosts asked for
    /// without a certificate (at most 64 waiting; more are dropped until it catches up).
    pub fn new(files: &[(String, Vec<u8>, Vec<u8>)]) -> Result<(Arc<Self>, mpsc::Receiver<String>), CertificateError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = files
            .iter()
            .map(|(what, chain, key)| certified_key(&provider, what, chain, key).map(|key| FileCertificate { key }))
            .collect::<Result<Vec<_>, _>>()?;
        let (misses, receiver) = mpsc::channel(64);
        let certificates = Self {
            provider,
            by_host: RwLock::new(HashMap::new()),
            files,
            misses,
        };
        Ok((Arc::new(certificates), receiver))
    }

    /// Replaces the per-host certificates with `certificates` (host, chain PEM, key PEM). One that
    /// will not load is skipped and named in the returned errors; the others serve.
    pub fn replace(&self, certificates: &[(String, String, String)]) -> Vec<CertificateError> {
        let mut errors = Vec::new();
        let mut loaded = HashMap::with_capacity(certificates.len());
        for (host, chain, key) in certificates {
            match certified_key(&self.provider, host, chain.as_bytes(), key.as_bytes()) {
                Ok(key) => {
                    loaded.insert(host.to_ascii_lowercase(), key);
                }
                Err(e) => errors.push(e),
            }
        }
        *self.by_host.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        errors
    }

    /// The certificate `host` is served with, if any.
    pub fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.to_ascii_lowercase();
        if let Some(key) = self.by_host.read().unwrap_or_else(|p| p.into_inner()).get(&host) {
            return Some(key.clone());
        }
        self.files.iter().find(|f| f.serves(&host)).map(|f| f.key.clone())
    }

    /// Whether `host` has a certificate (its plain-HTTP requests are redirected to HTTPS).
    pub fn has(&self, host: &str) -> bool {
        self.for_host(host).is_some()
    }

    /// Reports a host asked for over TLS without a certificate (never blocks).
    pub fn missed(&self, host: &str) {
        let _ = self.misses.try_send(host.to_ascii_lowercase());
    }

    /// The TLS listener's configuration: TLS 1.2 and 1.3, HTTP/1.1, certificates by SNI.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertificateError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertificateError::new("the TLS listener", e))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name()?;
        let found = self.for_host(host);
        if found.is_none() {
            self.missed(host);
        }
        found
    }
}

/// TLS on the router: its certificates, the HTTP-01 answers, and the port HTTPS URLs name.
pub struct Tls {
    pub certificates: Arc<Certificates>,
    pub challenges: Arc<dyn ChallengeAnswers>,
    /// `:8443`, or empty for 443: the port suffix of redirects and printed URLs.
    pub port_suffix: String,
}

impl Tls {
    pub fn new(certificates: Arc<Certificates>, challenges: Arc<dyn ChallengeAnswers>, public_port: u16) -> Self {
        Self {
            certificates,
            challenges,
            port_suffix: if public_port == 443 {
                String::new()
            } else {
                format!(":{public_port}")
            },
        }
    }
}

/// An HTTP-01 token: base64url, as RFC 8555 §8.3 makes them (at least 128 bits of entropy).
pub(crate) fn is_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`: (chain PEM, key PEM).
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_certificate_file_serves_the_names_it_holds_and_a_host_s_own_wins() {
        let (chain, key) = self_signed(&["*.files.test"]);
        let file = ("the file".to_string(), chain.into_bytes(), key.into_bytes());
        let (certificates, _misses) = Certificates::new(&[file]).unwrap();
        assert!(certificates.has("a.files.test") && certificates.has("B.files.test"));
        assert!(
            !certificates.has("files.test") && !certificates.has("a.b.files.test") && !certificates.has("other.test")
        );

        let (chain, key) = self_signed(&["a.files.test"]);
        let own = certificates.replace(&[("a.files.test".into(), chain.clone(), key.clone())]);
        assert!(own.is_empty(), "{own:?}");
        let served = certificates.for_host("a.files.test").unwrap();
        let expected = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            served.cert[0], expected,
            "the host's own certificate wins over the file's"
        );

        // One that does not load is named; the others keep serving.
        let errors = certificates.replace(&[
            ("broken.test".into(), "not pem".into(), key.clone()),
            ("a.files.test".into(), chain, key),
        ]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("broken.test:"), "{}", errors[0]);
        assert!(certificates.has("a.files.test") && !certificates.has("broken.test"));
    }

    #[test]
    fn a_key_that_does_not_match_is_refused_with_the_file_named() {
        let (chain, _) = self_signed(&["a.test"]);
        let (_, other_key) = self_signed(&["b.test"]);
        let error = Certificates::new(&[(
            "ENCLII_ROUTER_TLS_CERT `x.pem`".into(),
            chain.into_bytes(),
            other_key.into_bytes(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("ENCLII_ROUTER_TLS_CERT `x.pem`: the key does not match"),
            "{error}"
        );
    }

    #[test]
    fn challenge_tokens_are_base64url_of_a_sane_length() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!is_token("short"));
        assert!(!is_token("../../etc/passwd-and-more-characters"));
        assert!(!is_token(&"a".repeat(300)));
    }
}
