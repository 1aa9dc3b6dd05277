//! Custom domains: which hosts a project must prove it owns, and where the proof lives.
//!
//! A project proves it controls a host with a TXT record `_enclii-challenge.<host>` whose value is
//! the domain's token. A wildcard `*.example.com` is proven on the apex's record
//! (`_enclii-challenge.example.com`), as ACME proves wildcards on the apex.

use crate::spec::validate_hostname;

/// The label the ownership record lives under.
pub const CHALLENGE_LABEL: &str = "_enclii-challenge";

/// The name of the TXT record that proves `host` (a wildcard's apex for `*.` hosts).
pub fn challenge_name(host: &str) -> String {
    format!("{CHALLENGE_LABEL}.{}", host.strip_prefix("*.").unwrap_or(host))
}

/// Checks a host a user claims as a custom domain: a DNS hostname (see [`validate_hostname`]) of
/// at least two labels under any wildcard, so that neither a top-level domain nor a wildcard over
/// one can be claimed.
pub fn validate_custom_domain(host: &str) -> Result<(), String> {
    validate_hostname(host)?;
    let name = host.strip_prefix("*.").unwrap_or(host);
    if !name.contains('.') {
        return Err(format!(
            "must be a domain name with at least two labels, such as `app.example.com` (got {host:?}); a \
             top-level or single-label name cannot be proven in public DNS"
        ));
    }
    Ok(())
}

/// Whether `name` lies under `domain` (is it, or one of its subdomains).
pub fn is_under(name: &str, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    name == domain || name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
}

/// Whether `host` lies under a name reserved from public DNS, which nobody can register and so
/// nobody can prove: RFC 2606 (`test`, `example`, `invalid`, `localhost`, `example.com`/`.net`/
/// `.org`), RFC 6761/6762 (`local`), RFC 8375 (`home.arpa`) and ICANN's private-use `internal`.
/// Routes on these hosts need no proof of ownership; no public CA issues certificates for them.
pub fn is_reserved_host(host: &str) -> bool {
    const RESERVED: &[&str] = &[
        "test",
        "example",
        "invalid",
        "localhost",
        "local",
        "internal",
        "home.arpa",
        "example.com",
        "example.net",
        "example.org",
    ];
    let name = host.strip_prefix("*.").unwrap_or(host).trim_end_matches('.');
    RESERVED.iter().any(|reserved| is_under(name, reserved))
}

/// Whether a verified domain `proven` vouches for `host`: the proof of `proven` is the TXT record
/// on its apex (see [`challenge_name`]), the record a zone's owner controls, so it covers the apex
/// and every name under it, wildcards included.
pub fn proof_covers(proven: &str, host: &str) -> bool {
    let apex = proven.strip_prefix("*.").unwrap_or(proven);
    is_under(host.strip_prefix("*.").unwrap_or(host), apex)
}

/// A fresh ownership token: what the TXT record must hold.
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("enclii-verify-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_proven_on_the_apex() {
        assert_eq!(challenge_name("app.example.com"), "_enclii-challenge.app.example.com");
        assert_eq!(challenge_name("*.example.com"), "_enclii-challenge.example.com");
    }

    #[test]
    fn custom_domains_need_two_labels_and_one_wildcard_level() {
        assert!(validate_custom_domain("app.example.com").is_ok());
        assert!(validate_custom_domain("*.example.com").is_ok());
        assert!(validate_custom_domain("com").is_err());
        assert!(validate_custom_domain("*.com").is_err());
        assert!(validate_custom_domain("*.*.example.com").is_err());
        assert!(validate_custom_domain("a.*.example.com").is_err());
        assert!(validate_custom_domain("10.0.0.1").is_err());
        assert!(validate_custom_domain("exa mple.com").is_err());
    }

    #[test]
    fn under_means_the_name_or_a_subdomain() {
        assert!(is_under("a.example.com", "example.com"));
        assert!(is_under("example.com", "example.com."));
        assert!(!is_under("badexample.com", "example.com"));
    }

    #[test]
    fn reserved_names_are_the_registries_own() {
        for host in [
            "app.test",
            "*.shop.test",
            "localhost",
            "api.localhost",
            "example.com",
            "www.example.org",
            "x.internal",
            "nas.home.arpa",
            "printer.local",
            "a.invalid",
            "b.example",
        ] {
            assert!(is_reserved_host(host), "{host}");
        }
        for host in [
            "api.example.dev",
            "test.com",
            "myexample.com",
            "example.com.evil.io",
            "internal.io",
            "arpa",
        ] {
            assert!(!is_reserved_host(host), "{host}");
        }
    }

    #[test]
    fn a_proof_covers_its_apex_and_everything_under_it() {
        assert!(proof_covers("shop.io", "shop.io"));
        assert!(proof_covers("shop.io", "api.shop.io"));
        assert!(proof_covers("shop.io", "*.stage.shop.io"));
        assert!(proof_covers("*.shop.io", "shop.io"));
        assert!(proof_covers("*.shop.io", "a.b.shop.io"));
        assert!(proof_covers("api.shop.io", "v2.api.shop.io"));
        assert!(!proof_covers("api.shop.io", "shop.io"));
        assert!(!proof_covers("api.shop.io", "www.shop.io"));
        assert!(!proof_covers("shop.io", "myshop.io"));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
        assert!(new_token().starts_with("enclii-verify-"));
    }
}
