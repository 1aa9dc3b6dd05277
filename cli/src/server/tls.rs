//! HTTPS on the Junctions router: its settings, the certificates it serves (loaded from the store
//! and reloaded when the store's change), the HTTP-01 answers it gives (from the store, so any
//! worker's order is answered here) and certificates ordered on a generated host's first TLS
//! request, rate-limited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use enclii_deploy::certificates::{AcmeConfig, LETS_ENCRYPT};
use enclii_deploy_docker::Junctions;
use enclii_deploy_docker::junctions::tls::{Certificates, ChallengeAnswers, Tls};
use enclii_store::{ACME_ACTOR, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Address of the router's HTTPS listener (Docker target), e.g. `0.0.0.0:443`. Unset: the
    /// router serves plain HTTP only and no certificate is ordered.
    #[arg(long = "router-tls-listen", env = "ENCLII_ROUTER_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// The port users reach the HTTPS listener on, for redirects and URLs (default: its port).
    #[arg(long = "router-tls-public-port", env = "ENCLII_ROUTER_TLS_PUBLIC_PORT")]
    tls_public_port: Option<u16>,
    /// The ACME directory certificates are ordered from (HTTP-01, answered by the router), or
    /// `off` to serve only the certificate file below.
    #[arg(long = "acme-directory", env = "ENCLII_ACME_DIRECTORY", default_value = LETS_ENCRYPT)]
    acme_directory: String,
    /// The ACME account's contact address (expiry notices from the CA).
    #[arg(long = "acme-email", env = "ENCLII_ACME_EMAIL")]
    acme_email: Option<String>,
    /// A PEM root certificate to trust for the ACME directory's own HTTPS, besides the system's
    /// (a private or test CA such as Pebble).
    #[arg(long = "acme-ca-root", env = "ENCLII_ACME_CA_ROOT")]
    acme_ca_root: Option<PathBuf>,
    /// A PEM certificate chain served for every host its names cover that has no certificate of
    /// its own, typically `*.<preview domain>` (with `--router-tls-key`).
    #[arg(long = "router-tls-cert", env = "ENCLII_ROUTER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--router-tls-cert`.
    #[arg(long = "router-tls-key", env = "ENCLII_ROUTER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Certificates are renewed this many days before they expire.
    #[arg(long = "cert-renew-days", env = "ENCLII_CERT_RENEW_DAYS", default_value_t = 30)]
    renew_days: u64,
    /// How often the scheduler looks for certificates due an order (renewals, verified domains
    /// without one, failed orders an hour on).
    #[arg(long = "cert-check-seconds", env = "ENCLII_CERT_CHECK_SECONDS", default_value_t = 60)]
    check_seconds: u64,
    /// Certificates ordered per hour on the first TLS request of a generated host (previews,
    /// `ENCLII_BASE_DOMAIN` hosts), at most; `0` orders none that way.
    #[arg(
        long = "acme-on-demand-per-hour",
        env = "ENCLII_ACME_ON_DEMAND_PER_HOUR",
        default_value_t = 20
    )]
    on_demand_per_hour: u32,
}

impl TlsArgs {
    pub fn listen(&self) -> Option<SocketAddr> {
        self.tls_listen
    }

    /// Where certificates come from; `None` when HTTPS is off or ACME is `off`.
    pub fn acme(&self) -> Option<AcmeConfig> {
        let directory = self.acme_directory.trim();
        if self.tls_listen.is_none() || directory.eq_ignore_ascii_case("off") {
            return None;
        }
        Some(AcmeConfig {
            directory: directory.to_string(),
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
        })
    }

    /// How long before expiry a certificate is renewed (the scheduler's pass), when ordering.
    pub fn renew_before(&self) -> Option<Duration> {
        self.acme()
            .map(|_| Duration::from_secs(self.renew_days.saturating_mul(86_400)))
    }

    /// Checks the settings that can be checked before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(acme) = self.acme() {
            if !acme.directory.starts_with("https://") || acme.directory.len() <= "https://".len() {
                anyhow::bail!(
                    "ENCLII_ACME_DIRECTORY: `{}` is not an https:// URL (ACME runs over HTTPS, RFC 8555 §6.1); give \
                     the ACME directory's URL, or `off` to serve only ENCLII_ROUTER_TLS_CERT",
                    acme.directory
                );
            }
            if let Some(root) = &acme.ca_root {
                std::fs::metadata(root)
                    .with_context(|| format!("ENCLII_ACME_CA_ROOT: cannot read `{}`", root.display()))?;
            }
        }
        Ok(())
    }

    /// Turns HTTPS on in `junctions`; returns the TLS configuration to accept with, and the
    /// receiver of hosts asked for without a certificate.
    pub fn enable(
        &self,
        junctions: &Junctions,
        store: Arc<Store>,
    ) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<Certificates>, mpsc::Receiver<String>)> {
        let listen = self.tls_listen.context("no TLS listener configured")?;
        let mut files = Vec::new();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read(path).with_context(|| format!("{what}: cannot read `{}`", path.display()))
            };
            files.push((
                format!("ENCLII_ROUTER_TLS_CERT `{}`", cert.display()),
                read(cert, "ENCLII_ROUTER_TLS_CERT")?,
                read(key, "ENCLII_ROUTER_TLS_KEY")?,
            ));
        }
        let (certificates, misses) = Certificates::new(&files)?;
        let config = certificates.server_config()?;
        let public_port = self.tls_public_port.unwrap_or(listen.port());
        junctions.enable_tls(Tls::new(
            certificates.clone(),
            Arc::new(StoreChallenges(store)),
            public_port,
        ));
        Ok((config, certificates, misses))
    }

    pub fn check_every(&self) -> Duration {
        Duration::from_secs(self.check_seconds.max(1))
    }

    pub fn on_demand_per_hour(&self) -> u32 {
        self.on_demand_per_hour
    }
}

/// HTTP-01 answers from the store.
struct StoreChallenges(Arc<Store>);

#[async_trait]
impl ChallengeAnswers for StoreChallenges {
    async fn answer(&self, token: &str) -> Option<String> {
        match self.0.acme_challenge(token).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(error = %e, "cannot read an ACME challenge's answer");
                None
            }
        }
    }
}

/// Keeps `certificates` equal to the store's unexpired ones: a cheap fingerprint every `every`,
/// a full reload when it moved (and once a minute, so expired ones leave).
pub async fn sync(store: Arc<Store>, certificates: Arc<Certificates>, every: Duration, shutdown: CancellationToken) {
    let mut seen = None;
    let mut loaded_at = Instant::now();
    loop {
        match store.certificates_fingerprint().await {
            Ok(fingerprint) if Some(fingerprint) != seen || loaded_at.elapsed() > Duration::from_secs(60) => {
                match store.serving_certificates().await {
                    Ok(serving) => {
                        let triples: Vec<_> = serving.into_iter().map(|c| (c.host, c.chain_pem, c.key_pem)).collect();
                        for error in certificates.replace(&triples) {
                            warn!(%error, "a stored certificate does not load; its host is not served over HTTPS");
                        }
                        if seen.is_some_and(|(rows, _)| rows != fingerprint.0) || seen.is_none() {
                            info!(certificates = triples.len(), "router certificates loaded");
                        }
                        seen = Some(fingerprint);
                        loaded_at = Instant::now();
                    }
                    Err(e) => warn!(error = %e, "cannot load the certificates; will try again"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the certificates' fingerprint; will try again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Orders a certificate for a generated host (`<x>.<preview domain>`, `<x>.<base domain>`) that
/// was asked for over TLS without one and is routed here: each host at most once per ten minutes,
/// and at most `per_hour` orders an hour in all (ACME servers rate-limit accounts).
pub async fn order_on_first_use(
    store: Arc<Store>,
    junctions: Arc<Junctions>,
    mut misses: mpsc::Receiver<String>,
    generated: Vec<String>,
    per_hour: u32,
    shutdown: CancellationToken,
) {
    const HOST_AGAIN: Duration = Duration::from_secs(600);
    let mut asked: HashMap<String, Instant> = HashMap::new();
    let mut window = (Instant::now(), 0u32);
    loop {
        let host = tokio::select! {
            () = shutdown.cancelled() => return,
            host = misses.recv() => match host { Some(host) => host, None => return },
        };
        let is_generated = generated.iter().any(|domain| host.ends_with(&format!(".{domain}")));
        if per_hour == 0 || !is_generated || !junctions.routes_host(&host) {
            continue;
        }
        asked.retain(|_, at| at.elapsed() < HOST_AGAIN);
        if asked.contains_key(&host) {
            continue;
        }
        if window.0.elapsed() >= Duration::from_secs(3600) {
            window = (Instant::now(), 0);
        }
        if window.1 >= per_hour {
            warn!(%host, per_hour, "not ordering a certificate on first use: the hourly limit is reached");
            continue;
        }
        asked.insert(host.clone(), Instant::now());
        let project = match store.host_project(&host).await {
            Ok(Some(project)) => project,
            Ok(None) => continue,
            Err(e) => {
                warn!(%host, error = %e, "cannot look up a host's project");
                continue;
            }
        };
        match store.request_certificate(ACME_ACTOR, &project, &host).await {
            Ok(Some(_)) => {
                window.1 += 1;
                info!(%host, "certificate ordered on first use");
            }
            Ok(None) => {}
            Err(e) => warn!(%host, error = %e, "cannot order a certificate"),
        }
    }
}
