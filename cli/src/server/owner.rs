//! The platform's Owner: the bootstrap on a fresh installation, and `enclii server recover-owner`,
//! the operators' way back when no Owner can sign in (every Owner token lost or revoked). The
//! API never lets the last Owner on `*` go; recovery needs access to the database instead.

use anyhow::Context;
use clap::Args;
use enclii_api::auth::{Permission, Role};
use enclii_store::{Store, TokenRecord};

/// Who recoveries are audited as.
pub const RECOVERY_ACTOR: &str = "operator:recover-owner";

/// `enclii server recover-owner`: (re)creates a subject's Owner binding on `*` and mints it a new
/// token, printed once. Runs against the database the server uses (`--data-dir` or
/// `--database-url`, and the same `ENCLII_*` variables); the server may keep running.
#[derive(Args, Debug)]
pub struct RecoverOwnerArgs {
    /// The subject made Owner of every project (`user:<name>`, `oidc:<sub>`).
    #[arg(long, default_value = "user:admin")]
    subject: String,
}

impl RecoverOwnerArgs {
    pub fn subject(&self) -> &str {
        self.subject.trim()
    }
}

/// A token for `subject` with every scope, on every project, without expiry.
fn owner_token(subject: &str, name: &str, given: Option<&str>) -> anyhow::Result<(String, TokenRecord)> {
    let (plaintext, id, secret_hash) = match given {
        Some(token) => {
            let (id, secret) = enclii_auth::token::parse(token)
                .context("ENCLII_BOOTSTRAP_TOKEN is not a token of the form enclii_pat_<id>_<secret>")?;
            (token.to_string(), id.to_string(), enclii_auth::token::hash(secret))
        }
        None => {
            let token = enclii_auth::token::generate();
            (token.plaintext, token.id, token.secret_hash)
        }
    };
    let record = TokenRecord {
        id,
        secret_hash,
        subject: subject.into(),
        name: name.into(),
        scopes: serde_json::to_string(&Permission::ALL.map(|p| p.scope()))?,
        project: None,
        created_at: chrono::Utc::now().timestamp_millis(),
        expires_at: None,
        revoked_at: None,
    };
    Ok((plaintext, record))
}

/// On a fresh installation (nobody holds a role), creates `user:admin` as Owner of every project
/// with a token, and returns the token to show once. Called only once nothing else can stop the
/// start, so a token that is created is also shown.
pub async fn bootstrap(store: &Store, given: Option<&str>) -> anyhow::Result<Option<String>> {
    let (plaintext, record) = owner_token("user:admin", "bootstrap", given)?;
    let created = store.bootstrap("user:admin", Role::Owner.as_str(), &record).await?;
    Ok(created.then_some(plaintext))
}

/// Makes `args.subject` Owner on `*` and returns its new token (to show once). Audited as
/// [`RECOVERY_ACTOR`] (`role.bind` and `token.create`).
pub async fn recover(store: &Store, args: &RecoverOwnerArgs) -> anyhow::Result<String> {
    let subject = args.subject();
    if subject.is_empty() || subject.chars().any(|c| c.is_control() || c.is_whitespace()) {
        anyhow::bail!("--subject must be a subject such as user:admin (no spaces or control characters)");
    }
    let (plaintext, record) = owner_token(subject, "recover-owner", None)?;
    store
        .recover_owner(RECOVERY_ACTOR, &record)
        .await
        .with_context(|| format!("cannot make {subject} Owner"))?;
    Ok(plaintext)
}
