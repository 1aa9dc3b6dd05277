//! Placeholder; the OIDC helper fills this crate.
