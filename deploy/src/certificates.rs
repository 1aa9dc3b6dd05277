//! `cert-order`: gets a TLS certificate for one host from the ACME server (`ENCLII_ACME_DIRECTORY`)
//! over HTTP-01, with instant-acme. The challenge's answer goes into the store, where every
//! Junctions router process finds it (`/.well-known/acme-challenge/<token>`), so the worker that
//! orders need not be the one the ACME server reaches. The account is created once per
//! directory and kept sealed in the store.
//!
//! What the ACME server refuses (a failed validation, a rejected identifier, a rate limit) ends
//! the order `failed` with the server's problem document, visible on the domain; what cannot
//! reach it (down, a timeout) is retried by the queue with backoff, and after the last attempt
//! also ends `failed` — the scheduler orders again an hour later. Either way the host keeps its
//! last certificate until it expires.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use enclii_domain::jobs::CertOrder;
use enclii_store::{ACME_ACTOR, OrderOutcome, Store};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use tokio::sync::OnceCell;
use tracing::info;

use crate::handlers::Failure;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How long an HTTP-01 answer stays published.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// Where certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// The account's contact (`mailto:`), optional.
    pub email: Option<String>,
    /// A PEM root to trust for the directory's own HTTPS besides the system's (a test CA such as
    /// Pebble's); `None` trusts the platform's roots.
    pub ca_root: Option<PathBuf>,
}

/// The `cert-order` handler.
pub struct CertificateIssuer {
    store: Arc<Store>,
    config: AcmeConfig,
    account: OnceCell<Account>,
}

/// How an order went wrong: `Refused` by the ACME server (ends the order), `Unreachable` (retried).
enum OrderError {
    Refused(String),
    Unreachable(String),
}

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => OrderError::Refused(problem_text(&problem)),
            other => OrderError::Unreachable(other.to_string()),
        }
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    let mut text = problem.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(kind) = &problem.r#type {
        text.push_str(&format!(" ({kind})"));
    }
    for sub in &problem.subproblems {
        if let Some(detail) = &sub.detail {
            text.push_str(&format!("; {detail}"));
        }
    }
    text
}

impl CertificateIssuer {
    pub fn new(store: Arc<Store>, config: AcmeConfig) -> Self {
        Self {
            store,
            config,
            account: OnceCell::new(),
        }
    }

    /// An account builder whose HTTPS trusts the platform's roots, or the configured one.
    /// (instant-acme's client uses the process's rustls provider, which the binary installs.)
    fn builder(&self) -> Result<AccountBuilder, OrderError> {
        match &self.config.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|e| OrderError::Unreachable(format!("cannot set up the ACME client's HTTPS: {e}")))
    }

    /// The account: the one kept in the store for this directory, else a new one (kept).
    async fn account(&self) -> Result<&Account, OrderError> {
        self.account
            .get_or_try_init(|| async {
                let directory = &self.config.directory;
                let stored = self.store.acme_account(directory).await.map_err(store_error)?;
                let builder = self.builder()?;
                if let Some(stored) = stored {
                    let credentials: AccountCredentials = serde_json::from_str(&stored)
                        .map_err(|e| OrderError::Refused(format!("the stored ACME account is unreadable: {e}")))?;
                    return Ok(builder.from_credentials(credentials).await?);
                }
                let contact = self.config.email.as_ref().map(|email| format!("mailto:{email}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder.create(&new, directory.clone(), None).await?;
                let text = serde_json::to_string(&credentials)
                    .map_err(|e| OrderError::Unreachable(format!("cannot serialise the ACME account: {e}")))?;
                let kept = self
                    .store
                    .save_acme_account(directory, &text)
                    .await
                    .map_err(store_error)?;
                if kept == text {
                    info!(directory = %directory, "ACME account created");
                    return Ok(account);
                }
                // Another worker saved its account first: use that one.
                let credentials: AccountCredentials = serde_json::from_str(&kept)
                    .map_err(|e| OrderError::Refused(format!("the stored ACME account is unreadable: {e}")))?;
                let builder = self.builder()?;
                Ok(builder.from_credentials(credentials).await?)
            })
            .await
    }

    /// One order for `host`, start to finish.
    async fn order(&self, host: &str) -> Result<OrderOutcome, OrderError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            if authorization.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authorization.challenge(ChallengeType::Http01).ok_or_else(|| {
                OrderError::Refused("the ACME server offers no HTTP-01 challenge for this host".into())
            })?;
            let answer = challenge.key_authorization();
            let token = challenge.token.clone();
            self.store
                .put_acme_challenge(&token, answer.as_str(), host, CHALLENGE_TTL)
                .await
                .map_err(store_error)?;
            tokens.push(token);
            challenge.set_ready().await?;
        }
        let polls = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
        let status = order.poll_ready(&polls).await;
        for token in &tokens {
            // Best effort: expired answers are swept at the next order anyway.
            let _ = self.store.delete_acme_challenge(token).await;
        }
        match status? {
            OrderStatus::Ready => {}
            status => return Err(OrderError::Refused(self.why_invalid(&mut order, status).await)),
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&polls).await?;
        let not_after = not_after_ms(&chain_pem).map_err(OrderError::Refused)?;
        Ok(OrderOutcome::Issued {
            chain_pem,
            key_pem,
            not_after,
        })
    }

    /// The order's or its challenge's problem, for the user.
    async fn why_invalid(&self, order: &mut instant_acme::Order, status: OrderStatus) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            for challenge in &authorization.challenges {
                if let Some(problem) = &challenge.error {
                    reasons.push(problem_text(problem));
                }
            }
        }
        if let Some(problem) = &order.state().error {
            reasons.push(problem_text(problem));
        }
        match reasons.is_empty() {
            true => format!("the order ended {status:?} without a reason from the ACME server"),
            false => reasons.join("; "),
        }
    }

    async fn handle_order(&self, job: CertOrder, ctx: &JobContext) -> Result<(), Failure> {
        if self.store.certificate_order(&job.host, job.order).await?.is_none() {
            return Ok(());
        }
        let outcome = match self.order(&job.host).await {
            Ok(outcome) => outcome,
            Err(OrderError::Refused(reason)) => OrderOutcome::Failed(reason),
            Err(OrderError::Unreachable(reason)) if !ctx.is_last_attempt() => {
                let reason = format!(
                    "attempt {} of {}: the ACME server at {} could not be reached: {reason}; retrying",
                    ctx.job.attempt, ctx.job.policy.max_attempts, self.config.directory
                );
                self.store.note_certificate_retry(&job.host, job.order, &reason).await?;
                return Err(Failure(JobError::Retry(reason)));
            }
            Err(OrderError::Unreachable(reason)) => OrderOutcome::Failed(format!(
                "the ACME server at {} could not be reached after {} attempts: {reason}",
                self.config.directory, ctx.job.attempt
            )),
        };
        if let OrderOutcome::Failed(reason) = &outcome {
            tracing::warn!(host = %job.host, order = job.order, %reason, "certificate order failed");
        }
        let recorded = self
            .store
            .record_certificate_order(&job.host, job.order, &outcome)
            .await?;
        if recorded && let OrderOutcome::Issued { not_after, .. } = &outcome {
            info!(host = %job.host, order = job.order, actor = ACME_ACTOR, not_after_ms = not_after, "certificate issued");
        }
        Ok(())
    }
}

fn store_error(e: enclii_store::StoreError) -> OrderError {
    OrderError::Unreachable(format!("the store: {e}"))
}

/// The leaf's `notAfter` (epoch ms) of a PEM chain, leaf first.
pub fn not_after_ms(chain_pem: &str) -> Result<i64, String> {
    let leaf = x509_cert::Certificate::load_pem_chain(chain_pem.as_bytes())
        .map_err(|e| format!("the ACME server's certificate chain is not PEM X.509: {e}"))?
        .into_iter()
        .next()
        .ok_or("the ACME server returned an empty certificate chain")?;
    let not_after = leaf.tbs_certificate().validity().not_after.to_unix_duration();
    i64::try_from(not_after.as_millis()).map_err(|_| "the certificate's notAfter is out of range".into())
}

#[async_trait]
impl TypedHandler<CertOrder> for CertificateIssuer {
    async fn handle(&self, job: CertOrder, ctx: &JobContext) -> Result<(), JobError> {
        self.handle_order(job, ctx).await.map_err(|Failure(e)| e)
    }
}

/// Registers `cert-order`.
pub fn register(registry: &mut Registry, issuer: CertificateIssuer) {
    registry.register_typed::<CertOrder, _>(issuer);
}
