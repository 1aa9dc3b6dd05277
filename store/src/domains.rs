//! Custom domains: a host a project claims, the proof of ownership it must publish, and the route
//! its verification creates.
//!
//! A domain starts `pending` with a token; `domain-verify` jobs look for the token in DNS (see
//! `enclii_domain::ownership`) with backoff until the domain's deadline, then it is `failed`. Once
//! found, the domain is `verified` and routed: the verification adds the route in the same
//! transaction. Every (re)start of the checks is a new *round*; a check of an older round changes
//! nothing, so a re-check never races an earlier chain of checks.

use std::time::Duration;

use enclii_domain::jobs::DomainVerify;
use enclii_queue::NewJob;
use serde::Serialize;
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::routes::{find_route, insert_route, route_owner, sync_routes};
use crate::services::require_service;
use crate::{Store, now_ms};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Domain {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub service: String,
    pub host: String,
    pub path: String,
    /// What the TXT record must hold.
    pub token: String,
    pub status: DomainStatus,
    /// What the last check found, or why the domain failed.
    pub detail: Option<String>,
    pub round: i64,
    pub checks: i64,
    pub checked_at: Option<i64>,
    pub verified_at: Option<i64>,
    /// Checks stop after this instant (epoch ms).
    pub deadline: i64,
    pub route_id: Option<i64>,
    pub created_at: i64,
}

/// A domain to add; its host is already validated and lowercase.
#[derive(Clone, Debug)]
pub struct NewDomain {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub host: String,
    pub path: String,
    pub token: String,
    /// How long checks go on before the domain fails.
    pub window: Duration,
}

/// What one check of a domain's record found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainCheck {
    /// The token is in the record.
    Found,
    /// It is not (yet): what the resolver answered instead, for the user.
    Missing(String),
}

/// What a check did to the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainCheckOutcome {
    Verified(Domain),
    /// Still pending; the next check is enqueued for this instant (epoch ms).
    Retrying(Domain, i64),
    Failed(Domain),
    /// The domain is gone, or the check belongs to an older round.
    Stale,
}

/// The delay before check number `checks` (counting from 1): 30 s, doubling, at most an hour.
pub fn check_delay(checks: i64) -> Duration {
    let doublings = checks.clamp(1, 8) - 1;
    Duration::from_secs((30u64 << doublings).min(3600))
}

fn check_job(domain: &Domain, run_at_ms: Option<i64>) -> Result<NewJob> {
    let job = DomainVerify {
        domain: domain.id,
        round: domain.round,
    };
    let mut job = NewJob::typed(&domain.project, &job)?;
    job.run_at = run_at_ms.and_then(chrono::DateTime::from_timestamp_millis);
    Ok(job)
}

fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

async fn find_domain(conn: &mut Conn<'_>, host: &str) -> Result<Option<Domain>> {
    query_as::<Domain>("SELECT * FROM domains WHERE host = $1")
        .bind(host)
        .fetch_optional(&mut *conn)
        .await
}

/// Any project's domain by id (the check job's read; `get_domain` is the API's, by project).
async fn domain_by_id(conn: &mut Conn<'_>, id: i64) -> Result<Option<Domain>> {
    query_as::<Domain>("SELECT * FROM domains WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
}

pub(crate) async fn get_domain(conn: &mut Conn<'_>, project: &str, id: i64) -> Result<Domain> {
    query_as::<Domain>("SELECT * FROM domains WHERE id = $1 AND project = $2")
        .binds((id, project))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("domain {id} does not exist in project `{project}`")))
}

/// Who to ask about a host held by another project: its name stays private (tenancy), so the
/// user is sent to whoever runs this Enclii.
const ASK_ELSEWHERE: &str = "another project holds it; if it is yours, ask an operator of this Enclii (an Owner of \
                             every project) to find and release it";

pub(crate) async fn add_domain(conn: &mut Conn<'_>, actor: &str, new: &NewDomain) -> Result<Domain> {
    require_service(conn, &new.project, &new.service).await?;
    get_environment(conn, &new.project, &new.environment).await?;
    if let Some(held) = find_domain(conn, &new.host).await? {
        let holder = if held.project == new.project {
            format!("it is already domain {} of this project ({})", held.id, held.status)
        } else {
            ASK_ELSEWHERE.to_string()
        };
        return Err(StoreError::Conflict(format!("host `{}` is taken: {holder}", new.host)));
    }
    let routed: Vec<Route> = query_as::<Route>("SELECT * FROM routes WHERE host = $1 AND project <> $2 LIMIT 1")
        .binds((&new.host, &new.project))
        .fetch_all(&mut *conn)
        .await?;
    if !routed.is_empty() {
        return Err(StoreError::Conflict(format!(
            "host `{}` is taken: {ASK_ELSEWHERE}",
            new.host
        )));
    }
    let now = now_ms();
    let domain = query_as::<Domain>(
        "INSERT INTO domains (project, environment, service, host, path, token, status, deadline, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
    )
    .binds((
        &new.project,
        &new.environment,
        &new.service,
        &new.host,
        &new.path,
        &new.token,
        DomainStatus::Pending,
        now.saturating_add(window_ms(new.window)),
        now,
    ))
    .fetch_one(&mut *conn)
    .await?;
    let diff = json!({"host": domain.host, "path": domain.path, "service": domain.service,
                      "environment": domain.environment});
    audit(
        conn,
        actor,
        change(
            "domain.create",
            "domain",
            &domain.id.to_string(),
            Some(&new.project),
            diff,
        ),
    )
    .await?;
    conn.enqueue(check_job(&domain, None)?).await?;
    Ok(domain)
}

pub(crate) async fn list_domains(conn: &mut Conn<'_>, project: &str) -> Result<Vec<Domain>> {
    require_project(conn, project).await?;
    query_as::<Domain>("SELECT * FROM domains WHERE project = $1 ORDER BY host")
        .bind(project)
        .fetch_all(&mut *conn)
        .await
}

/// Starts a new round of checks now, with a fresh deadline: for a pending or failed domain, and
/// for a verified one whose route was removed (a routed, verified domain is left as it is).
pub(crate) async fn recheck_domain(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    id: i64,
    window: Duration,
) -> Result<Domain> {
    let domain = get_domain(conn, project, id).await?;
    if domain.status == DomainStatus::Verified && is_routed(conn, &domain).await? {
        return Ok(domain);
    }
    let now = now_ms();
    let domain = query_as::<Domain>(
        "UPDATE domains SET round = round + 1, status = $1, deadline = $2, detail = NULL
         WHERE id = $3 RETURNING *",
    )
    .binds((DomainStatus::Pending, now.saturating_add(window_ms(window)), domain.id))
    .fetch_one(&mut *conn)
    .await?;
    audit(
        conn,
        actor,
        change(
            "domain.recheck",
            "domain",
            &id.to_string(),
            Some(project),
            json!({"host": domain.host}),
        ),
    )
    .await?;
    conn.enqueue(check_job(&domain, None)?).await?;
    Ok(domain)
}

/// Whether the route the domain's verification created is still there.
async fn is_routed(conn: &mut Conn<'_>, domain: &Domain) -> Result<bool> {
    Ok(match domain.route_id {
        Some(route) => query_as::<Route>("SELECT * FROM routes WHERE id = $1 AND host = $2")
            .binds((route, &domain.host))
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
        None => false,
    })
}

/// Records one check of round `round`: verifies and routes the domain, schedules the next check,
/// or fails it past its deadline.
pub(crate) async fn record_domain_check(
    conn: &mut Conn<'_>,
    actor: &str,
    id: i64,
    round: i64,
    check: DomainCheck,
) -> Result<DomainCheckOutcome> {
    let current = domain_by_id(conn, id).await?;
    let Some(domain) = current.filter(|d| d.round == round && d.status == DomainStatus::Pending) else {
        return Ok(DomainCheckOutcome::Stale);
    };
    let now = now_ms();
    let checks = domain.checks + 1;
    let routed = match check {
        DomainCheck::Found => match route_domain(conn, &domain).await {
            Ok(route) => Ok(route),
            // Proven, but its host and path serve another service: say so and keep checking.
            Err(StoreError::Conflict(why)) => Err(format!("the record is in place, but {why}")),
            Err(e) => return Err(e),
        },
        DomainCheck::Missing(found) => Err(found),
    };
    match routed {
        Ok(route) => {
            let domain = query_as::<Domain>(
                "UPDATE domains SET status = $1, detail = NULL, checks = $2, checked_at = $3, verified_at = $3,
                 route_id = $4 WHERE id = $5 RETURNING *",
            )
            .binds((DomainStatus::Verified, checks, now, route.id, id))
            .fetch_one(&mut *conn)
            .await?;
            sync_routes(conn, &domain.project, &domain.environment, &domain.service).await?;
            let diff = json!({"host": domain.host, "route": route.id, "checks": checks});
            audit(
                conn,
                actor,
                change("domain.verify", "domain", &id.to_string(), Some(&domain.project), diff),
            )
            .await?;
            Ok(DomainCheckOutcome::Verified(domain))
        }
        Err(found) => {
            let next = now.saturating_add(window_ms(check_delay(checks)));
            if next > domain.deadline {
                let detail = format!("not verified before its deadline after {checks} checks; last check: {found}");
                let domain = query_as::<Domain>(
                    "UPDATE domains SET status = $1, detail = $2, checks = $3, checked_at = $4 WHERE id = $5 RETURNING *",
                )
                .binds((DomainStatus::Failed, &detail, checks, now, id))
                .fetch_one(&mut *conn)
                .await?;
                let diff = json!({"host": domain.host, "detail": detail});
                audit(
                    conn,
                    actor,
                    change("domain.fail", "domain", &id.to_string(), Some(&domain.project), diff),
                )
                .await?;
                return Ok(DomainCheckOutcome::Failed(domain));
            }
            let domain = query_as::<Domain>(
                "UPDATE domains SET detail = $1, checks = $2, checked_at = $3 WHERE id = $4 RETURNING *",
            )
            .binds((&found, checks, now, id))
            .fetch_one(&mut *conn)
            .await?;
            conn.enqueue(check_job(&domain, Some(next))?).await?;
            Ok(DomainCheckOutcome::Retrying(domain, next))
        }
    }
}

/// The route a verified domain serves through: its own, or an identical one the project already
/// had. A route of the same host and path to another service is a conflict the user resolves.
async fn route_domain(conn: &mut Conn<'_>, domain: &Domain) -> Result<Route> {
    if let Some(route) = find_route(conn, &domain.host, &domain.path).await? {
        if route.project == domain.project && route.service == domain.service && route.environment == domain.environment
        {
            return Ok(route);
        }
        return Err(StoreError::Conflict(format!(
            "host `{}` path `{}` is already routed to {}; remove that route, then re-check the domain",
            domain.host,
            domain.path,
            route_owner(&route, &domain.project)
        )));
    }
    insert_route(
        conn,
        &domain.project,
        &domain.environment,
        &domain.service,
        &domain.host,
        &domain.path,
        true,
    )
    .await
}

/// Removes the domain and the route its verification created; its certificate too when
/// `delete_certificate` (else it stays until it expires).
pub(crate) async fn delete_domain(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    id: i64,
    delete_certificate: bool,
) -> Result<Domain> {
    let domain = get_domain(conn, project, id).await?;
    query("DELETE FROM domains WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if let Some(route) = domain.route_id {
        query("DELETE FROM routes WHERE id = $1 AND project = $2 AND host = $3")
            .binds((route, project, &domain.host))
            .execute(&mut *conn)
            .await?;
        sync_routes(conn, project, &domain.environment, &domain.service).await?;
    }
    let diff = json!({"host": domain.host, "status": domain.status, "route": domain.route_id});
    audit(
        conn,
        actor,
        change("domain.delete", "domain", &id.to_string(), Some(project), diff),
    )
    .await?;
    if delete_certificate {
        crate::certificates::delete_certificate(conn, actor, project, &domain.host).await?;
    }
    Ok(domain)
}

impl Store {
    /// Adds a pending domain and enqueues its first check.
    pub async fn add_domain(&self, actor: &str, domain: &NewDomain) -> Result<Domain> {
        self.write(async |conn| add_domain(conn, actor, domain).await).await
    }
    pub async fn list_domains(&self, project: &str) -> Result<Vec<Domain>> {
        self.read(async |conn| list_domains(conn, project).await).await
    }
    pub async fn domain(&self, project: &str, id: i64) -> Result<Domain> {
        self.read(async |conn| get_domain(conn, project, id).await).await
    }
    /// Any project's domain, for the check job.
    pub async fn domain_by_id(&self, id: i64) -> Result<Option<Domain>> {
        self.read(async |conn| domain_by_id(conn, id).await).await
    }
    pub async fn recheck_domain(&self, actor: &str, project: &str, id: i64, window: Duration) -> Result<Domain> {
        self.write(async |conn| recheck_domain(conn, actor, project, id, window).await)
            .await
    }
    pub async fn record_domain_check(
        &self,
        actor: &str,
        id: i64,
        round: i64,
        check: DomainCheck,
    ) -> Result<DomainCheckOutcome> {
        self.write(async |conn| record_domain_check(conn, actor, id, round, check).await)
            .await
    }
    pub async fn delete_domain(&self, actor: &str, project: &str, id: i64, delete_certificate: bool) -> Result<Domain> {
        self.write(async |conn| delete_domain(conn, actor, project, id, delete_certificate).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_back_off_to_an_hour() {
        assert_eq!(check_delay(1), Duration::from_secs(30));
        assert_eq!(check_delay(2), Duration::from_secs(60));
        assert_eq!(check_delay(7), Duration::from_secs(1920));
        assert_eq!(check_delay(8), Duration::from_secs(3600));
        assert_eq!(check_delay(1000), Duration::from_secs(3600));
    }
}
