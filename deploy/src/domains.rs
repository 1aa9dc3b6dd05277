//! `domain-verify`: looks for a custom domain's ownership record in DNS and records what it found
//! (see `enclii_store::Domain`). Needs no deploy target, so every worker process runs it.
//!
//! The resolver is the system's (`/etc/resolv.conf`) or one name server (`ENCLII_DNS_RESOLVER`),
//! asked directly: no cache in front, so that a record the user just created is seen at the next
//! check rather than after a negative-cache TTL.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use enclii_domain::jobs::DomainVerify;
use enclii_domain::ownership::challenge_name;
use enclii_store::{DomainCheck, DomainCheckOutcome, DomainStatus, Store};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tracing::info;

use crate::handlers::Failure;

/// Who verifies domains in the audit trail.
const ACTOR: &str = "system:domains";

/// Which name server answers the ownership checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DnsResolver {
    /// The system's (`/etc/resolv.conf`).
    #[default]
    System,
    /// This one, over UDP and TCP.
    Server(SocketAddr),
}

impl DnsResolver {
    /// `ip` or `ip:port` (port 53 by default); empty or `system` is the system's.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text == "system" {
            return Ok(Self::System);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Server(addr));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self::Server(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                format!(
                    "ENCLII_DNS_RESOLVER: `{text}` is not a name server address; give an IP address with an optional \
                     port (`10.0.0.2`, `127.0.0.1:8053`, `[::1]:53`) or `system`"
                )
            })
    }

    fn connect(&self) -> Result<TokioResolver, String> {
        let builder = match self {
            Self::System => Resolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
            Self::Server(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        builder
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))
    }
}

/// The `domain-verify` handler.
pub struct DomainVerifier {
    store: Arc<Store>,
    resolver: TokioResolver,
    /// Whether a verified domain's certificate is ordered at once (HTTPS is on).
    orders_certificates: bool,
}

impl DomainVerifier {
    pub fn new(store: Arc<Store>, resolver: &DnsResolver) -> Result<Self, String> {
        Ok(Self {
            store,
            resolver: resolver.connect()?,
            orders_certificates: false,
        })
    }

    /// Orders each verified domain's certificate right away (a wildcard's needs a certificate
    /// file: HTTP-01 cannot prove one). Without this, or if the order cannot be enqueued now,
    /// the scheduler's certificate pass orders it.
    pub fn ordering_certificates(mut self, on: bool) -> Self {
        self.orders_certificates = on;
        self
    }

    /// What the TXT records at `name` say about `token`.
    async fn check(&self, name: &str, token: &str) -> DomainCheck {
        let fqdn = format!("{name}.");
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let values: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::TXT(txt) => {
                            Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect())
                        }
                        _ => None,
                    })
                    .collect();
                if values.iter().any(|value| value.trim() == token) {
                    DomainCheck::Found
                } else if values.is_empty() {
                    DomainCheck::Missing(format!("no TXT record at `{name}`"))
                } else {
                    DomainCheck::Missing(format!(
                        "the TXT record at `{name}` holds {values:?}, not this domain's token"
                    ))
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => {
                DomainCheck::Missing(format!("no TXT record at `{name}`"))
            }
            Err(e) => DomainCheck::Missing(format!("could not look up `{name}`: {e}")),
        }
    }

    async fn verify(&self, job: DomainVerify) -> Result<(), Failure> {
        let Some(domain) = self.store.domain_by_id(job.domain).await? else {
            return Ok(());
        };
        if domain.round != job.round || domain.status != DomainStatus::Pending {
            return Ok(());
        }
        let name = challenge_name(&domain.host);
        let check = self.check(&name, &domain.token).await;
        match self
            .store
            .record_domain_check(ACTOR, domain.id, job.round, check)
            .await?
        {
            DomainCheckOutcome::Verified(d) => {
                info!(domain = d.id, host = %d.host, "domain verified and routed");
                if self.orders_certificates && !d.host.starts_with("*.") {
                    self.store.request_certificate(ACTOR, &d.project, &d.host).await?;
                }
            }
            DomainCheckOutcome::Retrying(d, next) => {
                info!(domain = d.id, host = %d.host, next_at_ms = next, found = ?d.detail, "domain not verified yet")
            }
            DomainCheckOutcome::Failed(d) => info!(domain = d.id, host = %d.host, detail = ?d.detail, "domain failed"),
            DomainCheckOutcome::Stale => {}
        }
        Ok(())
    }
}

#[async_trait]
impl TypedHandler<DomainVerify> for DomainVerifier {
    async fn handle(&self, job: DomainVerify, _ctx: &JobContext) -> Result<(), JobError> {
        self.verify(job).await.map_err(|Failure(e)| e)
    }
}

/// Registers `domain-verify`.
pub fn register(registry: &mut Registry, verifier: DomainVerifier) {
    registry.register_typed::<DomainVerify, _>(verifier);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_addresses() {
        assert_eq!(DnsResolver::parse("").unwrap(), DnsResolver::System);
        assert_eq!(DnsResolver::parse("system").unwrap(), DnsResolver::System);
        assert_eq!(
            DnsResolver::parse("127.0.0.1:8053").unwrap(),
            DnsResolver::Server("127.0.0.1:8053".parse().unwrap())
        );
        assert_eq!(
            DnsResolver::parse("10.0.0.2").unwrap(),
            DnsResolver::Server("10.0.0.2:53".parse().unwrap())
        );
        let error = DnsResolver::parse("dns.example.com").unwrap_err();
        assert!(error.contains("ENCLII_DNS_RESOLVER"), "{error}");
    }
}
