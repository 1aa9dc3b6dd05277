//! TLS certificates from an ACME server: one row per host, its orders, and what the routers serve.
//!
//! An order starts with [`Store::request_certificate`]: the host's row turns `ordering` with a new
//! order number and a `cert-order` job of that number is enqueued in the same transaction (an
//! order already under way is not doubled). The job records the outcome: `issued` with the chain
//! and the sealed private key, or `failed` with the ACME server's reason — a failed renewal keeps
//! the last certificate, which serves until it expires. The scheduler re-orders what is due
//! ([`Store::order_due_certificates`]): verified domains without a certificate, certificates
//! within the renewal window, and orders that failed or stalled an hour ago.
//!
//! The ACME account (per directory URL) and the HTTP-01 answers also live here, so any router
//! process answers a challenge another worker's order created.

use std::time::Duration;

use enclii_domain::jobs::CertOrder;
use enclii_queue::NewJob;
use serde::Serialize;
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as};
use crate::error::{Result, StoreError};
use crate::model::{CertificateStatus, DomainStatus};
use crate::sealing::MasterKey;
use crate::{Store, now_ms};

/// Who orders certificates in the audit trail.
pub const ACME_ACTOR: &str = "system:acme";

/// An order that has not ended this long after it started (its job died) may be started again;
/// so may a failed one (the job's own retries are spent by then).
const REORDER_AFTER: Duration = Duration::from_secs(3600);

/// A host's certificate row, without its private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Certificate {
    pub host: String,
    pub project: String,
    pub status: CertificateStatus,
    pub orders: i64,
    /// The PEM chain, leaf first (public).
    pub chain_pem: Option<String>,
    /// When the certificate expires (epoch ms).
    pub not_after: Option<i64>,
    /// Why the last order failed.
    pub error: Option<String>,
    pub ordered_at: Option<i64>,
    pub issued_at: Option<i64>,
    pub updated_at: i64,
}

/// A certificate a router serves: the chain and its private key, opened.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    pub host: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("host", &self.host)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a `cert-order` job got from the ACME server.
#[derive(Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    Issued {
        chain_pem: String,
        key_pem: String,
        not_after: i64,
    },
    /// The ACME server's reason (or why it could not be reached).
    Failed(String),
}

/// The columns of [`Certificate`] (the sealed key stays in the database).
macro_rules! columns {
    () => {
        "host, project, status, orders, chain_pem, not_after, error, ordered_at, issued_at, updated_at"
    };
}

fn key_binding(host: &str) -> String {
    format!("certificate:{host}")
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn find_certificate(conn: &mut Conn<'_>, host: &str) -> Result<Option<Certificate>> {
    query_as::<Certificate>(concat!("SELECT ", columns!(), " FROM certificates WHERE host = $1"))
        .bind(host)
        .fetch_optional(&mut *conn)
        .await
}

/// Starts an order for `host` unless one is under way; `None` when one is.
pub(crate) async fn request_certificate(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    host: &str,
) -> Result<Option<Certificate>> {
    let now = now_ms();
    if let Some(current) = find_certificate(conn, host).await?
        && current.status == CertificateStatus::Ordering
        && current.ordered_at.is_some_and(|at| at > now - ms(REORDER_AFTER))
    {
        return Ok(None);
    }
    let certificate = query_as::<Certificate>(concat!(
        "INSERT INTO certificates (host, project, status, orders, ordered_at, updated_at)
         VALUES ($1, $2, $3, 1, $4, $4)
         ON CONFLICT (host) DO UPDATE SET project = $2, status = $3, orders = certificates.orders + 1,
             ordered_at = $4, updated_at = $4
         RETURNING ",
        columns!()
    ))
    .binds((host, project, CertificateStatus::Ordering, now))
    .fetch_one(&mut *conn)
    .await?;
    let job = CertOrder {
        host: host.to_string(),
        order: certificate.orders,
    };
    let job = NewJob::typed(project, &job)?.unique_key(format!("cert-order:{host}:{}", certificate.orders));
    conn.enqueue(job).await?;
    let diff = json!({"host": host, "order": certificate.orders,
                      "renewal": certificate.chain_pem.is_some()});
    audit(
        conn,
        actor,
        change("certificate.order", "certificate", host, Some(project), diff),
    )
    .await?;
    Ok(Some(certificate))
}

/// The host's row if `order` is its current order and still under way.
pub(crate) async fn current_order(conn: &mut Conn<'_>, host: &str, order: i64) -> Result<Option<Certificate>> {
    Ok(find_certificate(conn, host)
        .await?
        .filter(|c| c.orders == order && c.status == CertificateStatus::Ordering))
}

/// Records how order `order` ended; `false` when it is no longer the current order.
pub(crate) async fn record_order(
    conn: &mut Conn<'_>,
    key: &MasterKey,
    host: &str,
    order: i64,
    outcome: &OrderOutcome,
) -> Result<bool> {
    let Some(current) = current_order(conn, host, order).await? else {
        return Ok(false);
    };
    let now = now_ms();
    let (action, diff) = match outcome {
        OrderOutcome::Issued {
            chain_pem,
            key_pem,
            not_after,
        } => {
            let sealed = key.seal(key_pem.as_bytes(), &key_binding(host))?;
            query(
                "UPDATE certificates SET status = $1, chain_pem = $2, key_sealed = $3, not_after = $4, error = NULL,
                 issued_at = $5, updated_at = $5 WHERE host = $6",
            )
            .binds((CertificateStatus::Issued, chain_pem, &sealed, *not_after, now, host))
            .execute(&mut *conn)
            .await?;
            (
                "certificate.issue",
                json!({"host": host, "order": order, "not_after": not_after}),
            )
        }
        OrderOutcome::Failed(reason) => {
            query("UPDATE certificates SET status = $1, error = $2, updated_at = $3 WHERE host = $4")
                .binds((CertificateStatus::Failed, reason, now, host))
                .execute(&mut *conn)
                .await?;
            (
                "certificate.fail",
                json!({"host": host, "order": order, "error": reason}),
            )
        }
    };
    audit(
        conn,
        ACME_ACTOR,
        change(action, "certificate", host, Some(&current.project), diff),
    )
    .await?;
    Ok(true)
}

/// Every unexpired certificate, opened, for the routers.
pub(crate) async fn serving_certificates(conn: &mut Conn<'_>, key: &MasterKey) -> Result<Vec<ServingCertificate>> {
    let rows: Vec<(String, String, String, i64)> = query_as(
        "SELECT host, chain_pem, key_sealed, not_after FROM certificates
         WHERE chain_pem IS NOT NULL AND key_sealed IS NOT NULL AND not_after > $1 ORDER BY host",
    )
    .bind(now_ms())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(host, chain_pem, sealed, not_after)| {
            let key_pem = String::from_utf8(key.open(&sealed, &key_binding(&host))?)
                .map_err(|_| StoreError::Invalid(format!("the sealed key of {host}'s certificate is not PEM text")))?;
            Ok(ServingCertificate {
                host,
                chain_pem,
                key_pem,
                not_after,
            })
        })
        .collect()
}

/// Hosts due an order at `now`: verified custom domains with no certificate (wildcards need
/// DNS-01, which this ACME client does not answer: they are left to a configured certificate
/// file), certificates of routed hosts within `renew_before` of expiry, and orders that failed or
/// stalled [`REORDER_AFTER`] ago. At most `limit`, soonest expiry first.
pub(crate) async fn due_certificates(
    conn: &mut Conn<'_>,
    now: i64,
    renew_before: Duration,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    let stale = now - ms(REORDER_AFTER);
    query_as::<(String, String)>(
        "SELECT project, host FROM (
             SELECT d.project AS project, d.host AS host, 0 AS expiry FROM domains d
             WHERE d.status = $1 AND d.host NOT LIKE '*.%'
               AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.host = d.host)
             UNION ALL
             SELECT c.project, c.host, COALESCE(c.not_after, 0) FROM certificates c
             WHERE EXISTS (SELECT 1 FROM routes r WHERE r.host = c.host)
               AND ((c.status = $2 AND c.not_after < $3)
                 OR (c.status <> $2 AND COALESCE(c.ordered_at, 0) < $4))
         ) due ORDER BY expiry, host LIMIT $5",
    )
    .binds((
        DomainStatus::Verified,
        CertificateStatus::Issued,
        now.saturating_add(ms(renew_before)),
        stale,
        limit,
    ))
    .fetch_all(&mut *conn)
    .await
}

/// The certificates of a project's hosts (for its domains' views).
pub(crate) async fn project_certificates(conn: &mut Conn<'_>, project: &str) -> Result<Vec<Certificate>> {
    query_as::<Certificate>(concat!(
        "SELECT ",
        columns!(),
        " FROM certificates WHERE project = $1 ORDER BY host"
    ))
    .bind(project)
    .fetch_all(&mut *conn)
    .await
}

/// Deletes a host's certificate (a removed domain whose owner asked for it).
pub(crate) async fn delete_certificate(conn: &mut Conn<'_>, actor: &str, project: &str, host: &str) -> Result<bool> {
    let deleted = query("DELETE FROM certificates WHERE host = $1 AND project = $2")
        .binds((host, project))
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if deleted {
        audit(
            conn,
            actor,
            change(
                "certificate.delete",
                "certificate",
                host,
                Some(project),
                json!({"host": host}),
            ),
        )
        .await?;
    }
    Ok(deleted)
}

impl Store {
    /// Starts an order for `host` (of `project`) unless one is under way.
    pub async fn request_certificate(&self, actor: &str, project: &str, host: &str) -> Result<Option<Certificate>> {
        self.write(async |conn| request_certificate(conn, actor, project, host).await)
            .await
    }

    /// Keeps why an attempt of order `order` failed (it will be retried) on the host's row, for
    /// the user, without ending the order.
    pub async fn note_certificate_retry(&self, host: &str, order: i64, reason: &str) -> Result<()> {
        self.write(async |conn| {
            query("UPDATE certificates SET error = $1 WHERE host = $2 AND orders = $3 AND status = $4")
                .binds((reason, host, order, CertificateStatus::Ordering))
                .execute(&mut *conn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The host's row if `order` is its current, unfinished order (else the job is stale).
    pub async fn certificate_order(&self, host: &str, order: i64) -> Result<Option<Certificate>> {
        self.read(async |conn| current_order(conn, host, order).await).await
    }

    /// Records the outcome of order `order`; `false` if a newer order replaced it.
    pub async fn record_certificate_order(&self, host: &str, order: i64, outcome: &OrderOutcome) -> Result<bool> {
        let key = &self.key;
        self.write(async |conn| record_order(conn, key, host, order, outcome).await)
            .await
    }

    pub async fn certificate(&self, host: &str) -> Result<Option<Certificate>> {
        self.read(async |conn| find_certificate(conn, host).await).await
    }

    pub async fn project_certificates(&self, project: &str) -> Result<Vec<Certificate>> {
        self.read(async |conn| project_certificates(conn, project).await).await
    }

    /// Every unexpired certificate with its private key, for the routers.
    pub async fn serving_certificates(&self) -> Result<Vec<ServingCertificate>> {
        let key = &self.key;
        self.read(async |conn| serving_certificates(conn, key).await).await
    }

    /// A fingerprint of the certificates table (rows, last change): routers reload when it moves.
    pub async fn certificates_fingerprint(&self) -> Result<(i64, i64)> {
        self.read(async |conn| {
            query_as::<(i64, Option<i64>)>("SELECT COUNT(*), MAX(updated_at) FROM certificates")
                .fetch_one(&mut *conn)
                .await
                .map(|(rows, last)| (rows, last.unwrap_or(0)))
        })
        .await
    }

    /// Starts the orders due at `now` (see [`due_certificates`]); returns the hosts ordered.
    pub async fn order_due_certificates(&self, now: i64, renew_before: Duration, limit: i64) -> Result<Vec<String>> {
        let due = self
            .read(async |conn| due_certificates(conn, now, renew_before, limit).await)
            .await?;
        let mut ordered = Vec::new();
        for (project, host) in due {
            if self.request_certificate(ACME_ACTOR, &project, &host).await?.is_some() {
                ordered.push(host);
            }
        }
        Ok(ordered)
    }

    /// The project a routed host belongs to.
    pub async fn host_project(&self, host: &str) -> Result<Option<String>> {
        self.read(async |conn| {
            query_as::<(String,)>("SELECT project FROM routes WHERE host = $1 ORDER BY id LIMIT 1")
                .bind(host)
                .fetch_optional(&mut *conn)
                .await
                .map(|row| row.map(|(project,)| project))
        })
        .await
    }

    /// The sealed-at-rest ACME account for `directory`, opened.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        let key = &self.key;
        self.read(async |conn| {
            let sealed: Option<(String,)> = query_as("SELECT credentials FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(&mut *conn)
                .await?;
            sealed
                .map(|(sealed,)| {
                    String::from_utf8(key.open(&sealed, &format!("acme-account:{directory}"))?)
                        .map_err(|_| StoreError::Invalid("the sealed ACME account is not text".into()))
                })
                .transpose()
        })
        .await
    }

    /// Keeps the first account saved for `directory` (two workers may create one at once) and
    /// returns the one kept, opened.
    pub async fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<String> {
        let sealed = self
            .key
            .seal(credentials.as_bytes(), &format!("acme-account:{directory}"))?;
        self.write(async |conn| {
            query(
                "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (directory) DO NOTHING",
            )
            .binds((directory, &sealed, now_ms()))
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
        .await?;
        self.acme_account(directory)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("the ACME account of {directory}")))
    }

    /// Publishes an HTTP-01 answer for `ttl`.
    pub async fn put_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        host: &str,
        ttl: Duration,
    ) -> Result<()> {
        let now = now_ms();
        self.write(async |conn| {
            query("DELETE FROM acme_challenges WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            query(
                "INSERT INTO acme_challenges (token, key_authorization, host, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (token) DO UPDATE SET key_authorization = $2, host = $3, expires_at = $4",
            )
            .binds((token, key_authorization, host, now.saturating_add(ms(ttl))))
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
        .await
    }

    /// The HTTP-01 answer for `token`, while it has not expired.
    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>> {
        self.read(async |conn| {
            query_as::<(String,)>("SELECT key_authorization FROM acme_challenges WHERE token = $1 AND expires_at > $2")
                .binds((token, now_ms()))
                .fetch_optional(&mut *conn)
                .await
                .map(|row| row.map(|(answer,)| answer))
        })
        .await
    }

    pub async fn delete_acme_challenge(&self, token: &str) -> Result<()> {
        self.write(async |conn| {
            query("DELETE FROM acme_challenges WHERE token = $1")
                .bind(token)
                .execute(&mut *conn)
                .await
                .map(|_| ())
        })
        .await
    }
}
