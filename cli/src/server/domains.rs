//! Custom domains' settings: which name server checks ownership records, how long checks go on,
//! and the router's public address users point their hosts at.

use std::time::Duration;

use clap::Args;
use enclii_deploy::domains::DnsResolver;

#[derive(Args, Debug)]
pub struct DomainArgs {
    /// The name server that answers ownership checks (`_enclii-challenge.<host>` TXT records):
    /// `ip[:port]`, or `system` for `/etc/resolv.conf`.
    #[arg(long = "dns-resolver", env = "ENCLII_DNS_RESOLVER", default_value = "system")]
    dns_resolver: String,
    /// How long a custom domain's ownership is checked (with backoff) before it is `failed`.
    #[arg(long = "domain-verify-seconds", env = "ENCLII_DOMAIN_VERIFY_SECONDS", default_value_t = 72 * 3600)]
    verify_seconds: u64,
    /// The router's public hostname or IP address: what a custom domain's CNAME (or A) record
    /// points at, shown with each domain.
    #[arg(long = "router-public-address", env = "ENCLII_ROUTER_PUBLIC_ADDRESS")]
    router_public_address: Option<String>,
}

impl DomainArgs {
    pub fn resolver(&self) -> anyhow::Result<DnsResolver> {
        DnsResolver::parse(&self.dns_resolver).map_err(anyhow::Error::msg)
    }

    pub fn settings(&self, orders_certificates: bool) -> enclii_api::DomainSettings {
        enclii_api::DomainSettings {
            verify_window: Duration::from_secs(self.verify_seconds),
            router_address: self.router_public_address.clone(),
            orders_certificates,
        }
    }
}
