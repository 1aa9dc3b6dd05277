//! Who is calling and what they may do: bearer tokens (personal access tokens or OIDC), roles per
//! project from role bindings, token scopes, the per-token rate limit, and the per-address limit
//! on failed authentications (`crate::throttle`), checked before a token is looked up.
//!
//! Roles and permissions follow the product's matrix:
//!
//! | permission                       | Owner | Admin | Developer | ReadOnly |
//! |----------------------------------|:-----:|:-----:|:---------:|:--------:|
//! | `project.write` (projects, envs) |   ✓   |   ✓   |           |          |
//! | `deploy` (deploy, scale, rollback, builds, jobs) | ✓ | ✓ | ✓   |          |
//! | `secrets.service`                |   ✓   |   ✓   |     ✓     |          |
//! | `secrets.project` (project/env)  |   ✓   |   ✓   |           |          |
//! | `routes`                         |   ✓   |   ✓   |     ✓     |          |
//! | `read` (view, logs, metrics, cost, audit) | ✓ | ✓ | ✓ |   ✓      |
//! | `govern` (budgets, roles, limits)|   ✓   |   ✓   |           |          |
//! | `project.delete`                 |   ✓   |       |           |          |
//! | `tokens` (create, list, revoke your tokens) | ✓ | ✓ | ✓ |     ✓     |
//!
//! `tokens` is a scope of its own so that a narrow token (say `read`, for CI) cannot revoke or
//! mint its holder's other tokens; a token restricted to a project never manages tokens, and a
//! token holding every other scope holds `tokens` too (all-scope tokens, also those created before
//! the scope existed).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use enclii_auth::oidc::{OidcError, OidcVerifier};
use enclii_store::{RoleBinding, Store};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::throttle::AddressThrottle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Role {
    ReadOnly,
    Developer,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Developer, Role::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "Owner",
            Role::Admin => "Admin",
            Role::Developer => "Developer",
            Role::ReadOnly => "ReadOnly",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(text))
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match permission {
            Read | Tokens => true,
            Deploy | ServiceSecrets | Routes => self >= Role::Developer,
            ProjectWrite | ProjectSecrets | Govern => self >= Role::Admin,
            ProjectDelete => self == Role::Owner,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Read,
    Deploy,
    ServiceSecrets,
    ProjectSecrets,
    Routes,
    ProjectWrite,
    Govern,
    ProjectDelete,
    /// Create, list and revoke the caller's own tokens.
    Tokens,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::Read,
        Permission::Deploy,
        Permission::ServiceSecrets,
        Permission::ProjectSecrets,
        Permission::Routes,
        Permission::ProjectWrite,
        Permission::Govern,
        Permission::ProjectDelete,
        Permission::Tokens,
    ];

    /// The scope name a token lists to be allowed this permission.
    pub fn scope(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Deploy => "deploy",
            Permission::ServiceSecrets => "secrets.service",
            Permission::ProjectSecrets => "secrets.project",
            Permission::Routes => "routes",
            Permission::ProjectWrite => "project.write",
            Permission::Govern => "govern",
            Permission::ProjectDelete => "project.delete",
            Permission::Tokens => "tokens",
        }
    }

    pub fn from_scope(scope: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.scope() == scope)
    }

    /// A token's permissions from its stored scope names: unknown names are ignored, and a token
    /// holding every other scope holds `tokens` too (so that all-scope tokens created before the
    /// scope existed still manage tokens).
    pub fn from_scopes(names: &[String]) -> Vec<Permission> {
        let mut scopes: Vec<Permission> = names.iter().filter_map(|s| Permission::from_scope(s)).collect();
        let all_others = Permission::ALL
            .iter()
            .filter(|p| **p != Permission::Tokens)
            .all(|p| scopes.contains(p));
        if all_others && !scopes.contains(&Permission::Tokens) {
            scopes.push(Permission::Tokens);
        }
        scopes
    }
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// `user:<name>` for token holders, `oidc:<sub>` for OIDC users.
    pub subject: String,
    /// The key the rate limit counts against: the token id, or the OIDC subject.
    pub rate_key: String,
    /// A token's scopes; `None` (OIDC) means every permission the roles give.
    pub scopes: Option<Vec<Permission>>,
    /// A token restricted to one project.
    pub project: Option<String>,
    /// When the credential expires (epoch ms); tokens it creates expire no later.
    pub expires_at: Option<i64>,
    pub bindings: Vec<RoleBinding>,
}

impl Principal {
    /// The caller's role on a project (`None` for the all-projects `*` level).
    pub fn role_on(&self, project: Option<&str>) -> Option<Role> {
        self.bindings
            .iter()
            .filter(|b| b.project == "*" || Some(b.project.as_str()) == project)
            .filter_map(|b| Role::parse(&b.role))
            .max()
    }

    /// Allows `permission` on `project` (or platform-wide for `None`), or says precisely why not.
    pub fn require(&self, permission: Permission, project: Option<&str>) -> Result<Role, ApiError> {
        let place = project.map_or_else(|| "the platform".to_string(), |p| format!("project `{p}`"));
        if let (Some(only), Some(wanted)) = (&self.project, project)
            && only != wanted
        {
            return Err(ApiError::forbidden(
                format!("this token is restricted to project `{only}`, not `{wanted}`"),
                "use a token created for this project, or one without a project restriction",
            ));
        }
        if self.project.is_some() && project.is_none() {
            return Err(ApiError::forbidden(
                "this token is restricted to one project and cannot act platform-wide",
                "use a token without a project restriction",
            ));
        }
        if let Some(scopes) = &self.scopes
            && !scopes.contains(&permission)
        {
            return Err(ApiError::forbidden(
                format!("this token lacks the `{}` scope", permission.scope()),
                format!("create a token with `--scopes {}`", permission.scope()),
            ));
        }
        let role = self.role_on(project).ok_or_else(|| {
            ApiError::forbidden(
                format!("`{}` has no role on {place}", self.subject),
                "ask an Owner or Admin to grant you a role (PUT /v1/projects/{project}/members/{subject})",
            )
        })?;
        if !role.allows(permission) {
            return Err(ApiError::forbidden(
                format!(
                    "role {} on {place} does not allow `{}`",
                    role.as_str(),
                    permission.scope()
                ),
                "ask an Owner or Admin of the project for a role that does",
            ));
        }
        Ok(role)
    }

    /// [`require`](Self::require) for an object found by id: a caller who cannot even read the
    /// object's project gets `404` as for a missing id, so ids do not reveal other projects' objects.
    pub fn require_on(&self, permission: Permission, project: &str, what: &str) -> Result<Role, ApiError> {
        if !self.sees(project) {
            return Err(ApiError::NotFound(format!("{what} does not exist")));
        }
        self.require(permission, Some(project))
    }

    /// Whether the caller holds `permission` on at least one project (or platform-wide).
    pub fn holds_anywhere(&self, permission: Permission) -> bool {
        self.bindings.iter().any(|b| {
            let project = (b.project != "*").then_some(b.project.as_str());
            self.require(permission, project).is_ok()
        })
    }

    /// Allows managing the caller's tokens (create, list, revoke): a token needs the `tokens`
    /// scope and no project restriction; OIDC sessions may. No role is needed — what a new token
    /// may carry is still bounded by the caller's roles.
    pub fn require_token_management(&self) -> Result<(), ApiError> {
        if let Some(only) = &self.project {
            return Err(ApiError::forbidden(
                format!("this token is restricted to project `{only}` and cannot manage tokens"),
                "use a token without a project restriction that has the `tokens` scope",
            ));
        }
        if let Some(scopes) = &self.scopes
            && !scopes.contains(&Permission::Tokens)
        {
            return Err(ApiError::forbidden(
                "this token lacks the `tokens` scope, which creating, listing and revoking tokens needs",
                "use a token created with `--scopes tokens` (or one with every scope)",
            ));
        }
        Ok(())
    }

    /// Whether the caller can see a project at all.
    pub fn sees(&self, project: &str) -> bool {
        self.require(Permission::Read, Some(project)).is_ok()
    }
}

/// How tokens are checked and how often callers may call.
pub struct Authenticator {
    pub oidc: Option<OidcVerifier>,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Failed authentications per client address.
    failures: AddressThrottle,
}

/// The per-token request budget: `per_minute` sustained with bursts up to `burst`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const DEFAULT: RateLimit = RateLimit {
        per_minute: 60,
        burst: 120,
    };

    /// Failed authentications per client address: 30 at once, then one every 2 s.
    pub const AUTH_FAILURES: RateLimit = RateLimit {
        per_minute: 30,
        burst: 30,
    };

    pub(crate) fn limiter<K: Clone + std::hash::Hash + Eq>(self) -> DefaultKeyedRateLimiter<K> {
        let per_minute = NonZeroU32::new(self.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
    }
}

/// Checks `key` against `limiter`; a refusal says when to come back.
pub(crate) fn check_rate<K: Clone + std::hash::Hash + Eq>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    what: &str,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: wait.max(Duration::from_secs(1)),
            detail: format!("too many requests for {what}"),
            hint: None,
        }
    })
}

impl Authenticator {
    /// `limit`: requests per token; `failures`: failed authentications per client address.
    pub fn new(oidc: Option<OidcVerifier>, limit: RateLimit, failures: RateLimit) -> Self {
        Self {
            oidc,
            limiter: limit.limiter(),
            failures: AddressThrottle::new(failures, crate::throttle::MAX_ADDRESSES),
        }
    }

    /// The caller of a request from `client` (when known) with this `Authorization` header. An
    /// address that failed too often is refused before its token is looked up; each `401`
    /// counts against it, except when the identity provider is unreachable (not its fault).
    pub async fn authenticate(
        &self,
        store: &Store,
        header: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        if let Some(client) = client {
            self.failures.admit(client).map_err(|wait| ApiError::RateLimited {
                retry_after: wait,
                detail: "too many failed authentications from your address".into(),
                hint: Some(
                    "check the token you send (`enclii auth login`, or create a new one); until the wait is over \
                     every request from this address is refused, also with a valid token"
                        .into(),
                ),
            })?;
        }
        let identified = self.identify(store, header).await;
        if let (Some(client), Err(ApiError::Unauthorized { code, .. })) = (client, &identified)
            && *code != "oidc_unavailable"
        {
            self.failures.failed(client);
        }
        let principal = identified?;
        check_rate(&self.limiter, &principal.rate_key, "this token")?;
        Ok(principal)
    }

    async fn identify(&self, store: &Store, header: Option<&str>) -> Result<Principal, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthorized(
                "unauthenticated",
                "this route needs a bearer token",
                "send `Authorization: Bearer <token>` with a personal access token or an OIDC token",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "unauthenticated",
                    "the Authorization header is not a bearer token",
                    "send `Authorization: Bearer <token>`",
                )
            })?;
        if token.starts_with(enclii_auth::token::PREFIX) {
            self.personal_token(store, token).await
        } else {
            self.oidc_token(store, token).await
        }
    }

    async fn personal_token(&self, store: &Store, token: &str) -> Result<Principal, ApiError> {
        let invalid = || {
            ApiError::unauthorized(
                "invalid_token",
                "the token is not valid",
                "check that the whole token was copied, or create a new one",
            )
        };
        let (id, secret) = enclii_auth::token::parse(token).ok_or_else(invalid)?;
        let record = store.token(id).await?.ok_or_else(invalid)?;
        if !enclii_auth::token::verify(secret, &record.secret_hash) {
            return Err(invalid());
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized(
                "token_revoked",
                format!("token `{id}` was revoked"),
                "create a new token (POST /v1/tokens) or ask an Admin",
            ));
        }
        if record
            .expires_at
            .is_some_and(|at| at <= chrono::Utc::now().timestamp_millis())
        {
            return Err(ApiError::unauthorized(
                "token_expired",
                format!("token `{id}` has expired"),
                "create a new token (POST /v1/tokens)",
            ));
        }
        let scopes = Permission::from_scopes(&record.scope_list());
        Ok(Principal {
            bindings: store.roles_of(&record.subject).await?,
            subject: record.subject,
            rate_key: format!("pat:{id}"),
            scopes: Some(scopes),
            project: record.project,
            expires_at: record.expires_at,
        })
    }

    async fn oidc_token(&self, store: &Store, token: &str) -> Result<Principal, ApiError> {
        let verifier = self.oidc.as_ref().ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_token",
                "the token is not a personal access token, and OIDC is not configured on this server",
                "use a token from `enclii auth token create`, or configure ENCLII_OIDC_ISSUER, ENCLII_OIDC_AUDIENCE and ENCLII_OIDC_JWKS_URL",
            )
        })?;
        let claims = verifier.verify(token).await.map_err(|e| match e {
            OidcError::Expired => {
                ApiError::unauthorized("token_expired", "the OIDC token has expired", "sign in again")
            }
            e if e.is_server_side() => {
                tracing::warn!(error = %e, "OIDC key set unavailable");
                ApiError::unauthorized(
                    "oidc_unavailable",
                    format!("the OIDC token cannot be checked: {e}"),
                    "the identity provider's key set cannot be fetched; retry later or use a personal access token",
                )
            }
            e => ApiError::unauthorized(
                "invalid_token",
                format!("the OIDC token is not valid: {e}"),
                "sign in again",
            ),
        })?;
        let subject = format!("oidc:{}", claims.subject);
        Ok(Principal {
            expires_at: Some(claims.expires_at.saturating_mul(1000)),
            bindings: store.roles_of(&subject).await?,
            rate_key: subject.clone(),
            subject,
            scopes: None,
            project: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_matches_the_product_brief() {
        use Permission::*;
        let row = |p: Permission| Role::ALL.map(|r| r.allows(p));
        assert_eq!(row(ProjectWrite), [true, true, false, false]);
        assert_eq!(row(Deploy), [true, true, true, false]);
        assert_eq!(row(ServiceSecrets), [true, true, true, false]);
        assert_eq!(row(ProjectSecrets), [true, true, false, false]);
        assert_eq!(row(Routes), [true, true, true, false]);
        assert_eq!(row(Read), [true, true, true, true]);
        assert_eq!(row(Govern), [true, true, false, false]);
        assert_eq!(row(ProjectDelete), [true, false, false, false]);
        assert_eq!(row(Tokens), [true, true, true, true]);
    }

    #[test]
    fn every_other_scope_implies_tokens_and_nothing_less_does() {
        let names = |ps: &[Permission]| ps.iter().map(|p| p.scope().to_string()).collect::<Vec<_>>();
        let legacy_all: Vec<_> = Permission::ALL
            .into_iter()
            .filter(|p| *p != Permission::Tokens)
            .collect();
        assert!(Permission::from_scopes(&names(&legacy_all)).contains(&Permission::Tokens));
        let narrow = [Permission::Read, Permission::Deploy, Permission::Govern];
        assert!(!Permission::from_scopes(&names(&narrow)).contains(&Permission::Tokens));
    }

    #[test]
    fn scopes_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_scope(p.scope()), Some(p));
        }
    }
}
