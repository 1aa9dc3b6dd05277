//! GitHub webhook deliveries: accepting one (its releases and pipelines, in one transaction)
//! and reading them back.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, Decided, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::heads::{RefAdvance, advance};
use crate::model::*;
use crate::projects::{get_environment, insert_environment};
use crate::releases::{build_service, mark_superseded};
use crate::services::services_for_repository;
use crate::{Store, now_ms};
use enclii_domain::pipeline::preview_teardown;

/// Asks whether a project may spend one unit of its webhook budget (the API's per-project rate
/// limiter); asked once per project a delivery concerns, inside the delivery's transaction.
pub type WebhookBudget<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// What became of a delivery handed to [`Store::accept_webhook_within`].
#[derive(Clone, Debug)]
pub enum WebhookAcceptance {
    /// Recorded (or recorded before: [`WebhookOutcome::duplicate`]).
    Accepted(WebhookOutcome),
    /// Every project the delivery concerns is over its budget: nothing was recorded, so GitHub's
    /// redelivery will be acted on.
    Refused { projects: Vec<String> },
}

/// Persists a GitHub delivery and enqueues what it asks for, in one transaction; commits unless
/// the delivery is refused or its id was recorded first (by an earlier or a concurrent
/// transaction: [`Decided::RollBack`] with `None`, answered with the first outcome).
///
/// The delivery row is written once, last, with its outcome: its primary key is the dedup
/// (`ON CONFLICT DO NOTHING`), and a concurrent transaction with the same id waits there until the
/// first commits. The services of the repository are read once, for the budget and the builds.
pub(crate) async fn accept_webhook(
    conn: &mut Conn<'_>,
    delivery: &WebhookDelivery,
    budget: WebhookBudget<'_>,
) -> Result<Decided<Option<WebhookAcceptance>>> {
    let repository = delivery.intent.repository();
    let services = match repository {
        Some(repository) => services_for_repository(conn, repository).await?,
        None => vec![],
    };
    let mut projects: Vec<String> = services.iter().map(|s| s.project.clone()).collect();
    projects.dedup();
    // Per-project webhook budgets: projects over theirs are skipped; only when every project the
    // delivery concerns is over budget is it refused (not recorded, so GitHub can redeliver).
    let rate_limited: Vec<String> = projects.iter().filter(|p| !budget(p)).cloned().collect();
    if !projects.is_empty() && rate_limited.len() == projects.len() {
        return Ok(Decided::RollBack(Some(WebhookAcceptance::Refused { projects })));
    }
    let admitted: Vec<Service> = services
        .into_iter()
        .filter(|s| !rate_limited.contains(&s.project))
        .collect();
    // Jobs that would outlive a rollback (a Redis queue) must never be enqueued by a copy: there
    // the id is claimed first, and the row completed with the outcome at the end.
    let claim_first = !conn.jobs_roll_back();
    if claim_first && !record_delivery(conn, delivery, None).await? {
        return Ok(Decided::RollBack(None));
    }
    let actor = "github";
    let mut pipelines = Vec::new();
    let mut releases = Vec::new();
    let mut projects = Vec::new();
    let held_back = match (repository, delivery.intent.ref_move()) {
        (Some(repository), Some(moved)) => match advance(conn, repository, &moved).await? {
            RefAdvance::Forward => None,
            RefAdvance::Current => Some(format!(
                "ignored: {} already points at {} (a redelivered or replayed event; to build it again, \
                 POST …/releases)",
                moved.git_ref,
                shown(&moved.sha)
            )),
            RefAdvance::Stale { newest } => Some(format!(
                "ignored: a stale event: {} has moved on to {} since {} (a replayed or late delivery)",
                moved.git_ref,
                shown(&newest),
                shown(&moved.sha)
            )),
        },
        _ => None,
    };
    let outcome = match (held_back, &delivery.intent) {
        (Some(ignored), _) => ignored,
        (None, WebhookIntent::Ignore { outcome }) => outcome.clone(),
        (None, WebhookIntent::Push { branch, sha, .. }) => {
            for service in admitted {
                if service.branch.as_deref() != Some(branch.as_str()) {
                    continue;
                }
                let trigger = BuildTrigger {
                    project: service.project.clone(),
                    service: service.name.clone(),
                    git_sha: sha.clone(),
                    branch: branch.clone(),
                    deploy_to: Some(service.environment.clone()),
                    trigger: ReleaseTrigger::Push,
                };
                let (release, pipeline) = build_service(conn, &service, &trigger).await?;
                releases.push(release.id);
                pipelines.push(pipeline.id);
                projects.push(service.project);
            }
            describe(
                &pipelines,
                "no service deploys this repository and branch",
                &rate_limited,
            )
        }
        (
            None,
            WebhookIntent::Preview {
                number, branch, sha, ..
            },
        ) => {
            let environment = format!("preview-{number}");
            for service in admitted {
                insert_environment(conn, &service.project, &environment, &EnvironmentChange::default()).await?;
                let trigger = BuildTrigger {
                    project: service.project.clone(),
                    service: service.name.clone(),
                    git_sha: sha.clone(),
                    branch: branch.clone(),
                    deploy_to: Some(environment.clone()),
                    trigger: ReleaseTrigger::PullRequest,
                };
                let (release, pipeline) = build_service(conn, &service, &trigger).await?;
                releases.push(release.id);
                pipelines.push(pipeline.id);
                projects.push(service.project);
            }
            describe(&pipelines, "no service builds from this repository", &rate_limited)
        }
        (
            None,
            WebhookIntent::Teardown {
                repository,
                number,
                branch,
                ..
            },
        ) => {
            let environment = format!("preview-{number}");
            for service in admitted {
                match get_environment(conn, &service.project, &environment).await {
                    Ok(_) => {}
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
                let teardown = preview_teardown(&service.project, &service.name, repository, branch, *number)?;
                let enqueued = conn.enqueue_pipeline(teardown).await?;
                mark_superseded(conn, &enqueued.superseded, None).await?;
                pipelines.push(enqueued.id);
                projects.push(service.project);
            }
            describe(&pipelines, "no preview exists for this pull request", &rate_limited)
        }
    };
    let project = projects.first().cloned();
    let recorded = Recorded {
        outcome: &outcome,
        pipelines: &pipelines,
        project: project.as_deref(),
    };
    if claim_first {
        query("UPDATE webhook_deliveries SET outcome = $2, pipeline_ids = $3, project = $4 WHERE delivery_id = $1")
            .binds((&delivery.delivery_id, &outcome, json!(pipelines).to_string(), &project))
            .execute(&mut *conn)
            .await?;
    } else if !record_delivery(conn, delivery, Some(recorded)).await? {
        return Ok(Decided::RollBack(None));
    }
    let diff = json!({"event": delivery.event, "action": delivery.action, "repository": repository,
                      "outcome": outcome, "pipelines": pipelines, "releases": releases});
    audit(
        conn,
        actor,
        change(
            "webhook.receive",
            "delivery",
            &delivery.delivery_id,
            project.as_deref(),
            diff,
        ),
    )
    .await?;
    Ok(Decided::Commit(Some(WebhookAcceptance::Accepted(WebhookOutcome {
        delivery_id: delivery.delivery_id.clone(),
        duplicate: false,
        outcome,
        pipelines,
        releases,
    }))))
}

/// What a delivery came to, as its row keeps it.
struct Recorded<'a> {
    outcome: &'a str,
    pipelines: &'a [i64],
    project: Option<&'a str>,
}

/// Inserts the delivery's row — with what it came to, or `accepted` as a claim to complete —
/// unless its id is recorded already (`false`).
async fn record_delivery(
    conn: &mut Conn<'_>,
    delivery: &WebhookDelivery,
    recorded: Option<Recorded<'_>>,
) -> Result<bool> {
    let (outcome, pipelines, project) = match recorded {
        Some(r) => (r.outcome, json!(r.pipelines).to_string(), r.project),
        None => ("accepted", "[]".to_string(), None),
    };
    let fresh = query_scalar::<String>(
        "INSERT INTO webhook_deliveries (delivery_id, event, action, repository, outcome, pipeline_ids, project,
                                         received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
    )
    .binds((
        &delivery.delivery_id,
        &delivery.event,
        &delivery.action,
        delivery.intent.repository(),
        outcome,
        pipelines,
        project,
        now_ms(),
    ))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(fresh.is_some())
}

/// The first outcome of a delivery id recorded before.
async fn seen_before(conn: &mut Conn<'_>, delivery_id: &str) -> Result<WebhookOutcome> {
    let earlier = get_delivery(conn, delivery_id).await?;
    Ok(WebhookOutcome {
        delivery_id: earlier.delivery_id.clone(),
        duplicate: true,
        outcome: earlier.outcome.clone(),
        pipelines: earlier.pipelines(),
        releases: vec![],
    })
}

/// A ref's commit as outcomes show it: `closed` for a closed pull request's empty head.
fn shown(sha: &str) -> &str {
    if sha.is_empty() { "closed" } else { sha }
}

pub(crate) fn describe(pipelines: &[i64], nothing: &str, rate_limited: &[String]) -> String {
    let mut outcome = if pipelines.is_empty() {
        format!("ignored: {nothing}")
    } else {
        format!("enqueued {} pipeline(s)", pipelines.len())
    };
    if !rate_limited.is_empty() {
        outcome.push_str(&format!(
            "; skipped rate-limited project(s): {}",
            rate_limited.join(", ")
        ));
    }
    outcome
}

pub(crate) async fn get_delivery(conn: &mut Conn<'_>, id: &str) -> Result<Delivery> {
    query_as::<Delivery>("SELECT * FROM webhook_deliveries WHERE delivery_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("delivery `{id}` was never received")))
}

pub(crate) async fn list_deliveries(conn: &mut Conn<'_>, project: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
    query_as::<Delivery>(
        "SELECT * FROM webhook_deliveries WHERE ($1 IS NULL OR project = $1) ORDER BY received_at DESC LIMIT $2",
    )
    .binds((project, limit.clamp(1, 500)))
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    /// Accepts a delivery with each project's webhook budget asked of `budget`.
    pub async fn accept_webhook_within(
        &self,
        delivery: &WebhookDelivery,
        budget: WebhookBudget<'_>,
    ) -> Result<WebhookAcceptance> {
        let decided = self
            .write_deciding(async |conn| accept_webhook(conn, delivery, budget).await)
            .await?;
        match decided {
            Some(acceptance) => Ok(acceptance),
            None => Ok(WebhookAcceptance::Accepted(
                self.read(async |conn| seen_before(conn, &delivery.delivery_id).await)
                    .await?,
            )),
        }
    }
    /// Accepts a delivery without webhook budgets.
    pub async fn accept_webhook(&self, delivery: &WebhookDelivery) -> Result<WebhookOutcome> {
        match self.accept_webhook_within(delivery, &|_| true).await? {
            WebhookAcceptance::Accepted(outcome) => Ok(outcome),
            WebhookAcceptance::Refused { .. } => unreachable!("an unlimited budget refuses no project"),
        }
    }
    pub async fn delivery(&self, id: &str) -> Result<Delivery> {
        self.read(async |conn| get_delivery(conn, id).await).await
    }
    pub async fn list_deliveries(&self, project: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
        self.read(async |conn| list_deliveries(conn, project, limit).await)
            .await
    }
}
