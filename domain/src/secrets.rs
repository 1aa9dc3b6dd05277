//! Names of Lockbox secrets that belong to the platform rather than to a running service.

/// Secrets the platform itself reads: the clone's token and the project's image signing key.
/// They are never given to a running service, and they are reserved to the project and
/// environment scopes (set by an Admin): a service-scoped one would let anyone who may set that
/// service's secrets (a Developer) replace the project's signing key or clone token.
pub const PLATFORM_SECRETS: [&str; 3] = ["GIT_TOKEN", "COSIGN_PRIVATE_KEY", "COSIGN_PASSWORD"];

/// Whether `name` is one of [`PLATFORM_SECRETS`].
pub fn is_platform_secret(name: &str) -> bool {
    PLATFORM_SECRETS.contains(&name)
}
