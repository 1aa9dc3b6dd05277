//! GitHub webhook deliveries: accepting one (its releases and pipelines, in one transaction)
//! and reading them back.

use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::heads::{RefAdvance, advance};
use crate::model::*;
use crate::projects::{get_environment, insert_environment};
use crate::releases::{build_service, mark_superseded};
use crate::services::services_for_repository;
use crate::{Store, now_ms};
use enclii_domain::pipeline::preview_teardown;

/// Persists a GitHub delivery and enqueues what it asks for, in one transaction. A delivery id
/// seen before changes nothing and answers with the first outcome.
pub(crate) async fn accept_webhook(conn: &mut Conn<'_>, delivery: &WebhookDelivery) -> Result<WebhookOutcome> {
    let repository = delivery.intent.repository();
    let fresh = query_scalar::<String>(
        "INSERT INTO webhook_deliveries (delivery_id, event, action, repository, outcome, pipeline_ids, received_at)
         VALUES ($1, $2, $3, $4, 'accepted', '[]', $5) ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
    )
    .binds((
        &delivery.delivery_id,
        &delivery.event,
        &delivery.action,
        repository,
        now_ms(),
    ))
    .fetch_optional(&mut *conn)
    .await?;
    if fresh.is_none() {
        let earlier = get_delivery(conn, &delivery.delivery_id).await?;
        return Ok(WebhookOutcome {
            delivery_id: earlier.delivery_id.clone(),
            duplicate: true,
            outcome: earlier.outcome.clone(),
            pipelines: earlier.pipelines(),
            releases: vec![],
        });
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
        (
            None,
            WebhookIntent::Push {
                repository,
                branch,
                sha,
                ..
            },
        ) => {
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
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
                &delivery.rate_limited,
            )
        }
        (
            None,
            WebhookIntent::Preview {
                repository,
                number,
                branch,
                sha,
                ..
            },
        ) => {
            let environment = format!("preview-{number}");
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
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
            describe(
                &pipelines,
                "no service builds from this repository",
                &delivery.rate_limited,
            )
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
            for service in admitted(conn, repository, &delivery.rate_limited).await? {
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
            describe(
                &pipelines,
                "no preview exists for this pull request",
                &delivery.rate_limited,
            )
        }
    };
    let project = projects.first().cloned();
    query("UPDATE webhook_deliveries SET outcome = $2, pipeline_ids = $3, project = $4 WHERE delivery_id = $1")
        .binds((&delivery.delivery_id, &outcome, json!(pipelines).to_string(), &project))
        .execute(&mut *conn)
        .await?;
    let diff = json!({"event": delivery.event, "action": delivery.action, "repository": repository,
                      "outcome": outcome, "pipelines": pipelines, "releases": releases});
    audit(
        conn,
        actor,
        change(
            "webhook.receive",
            "delivery",
            &delivery.delivery_id,
            projects.first().map(String::as_str),
            diff,
        ),
    )
    .await?;
    Ok(WebhookOutcome {
        delivery_id: delivery.delivery_id.clone(),
        duplicate: false,
        outcome,
        pipelines,
        releases,
    })
}

/// A ref's commit as outcomes show it: `closed` for a closed pull request's empty head.
fn shown(sha: &str) -> &str {
    if sha.is_empty() { "closed" } else { sha }
}

/// The services building from `repository`, without those of rate-limited projects.
pub(crate) async fn admitted(conn: &mut Conn<'_>, repository: &str, rate_limited: &[String]) -> Result<Vec<Service>> {
    let mut services = services_for_repository(conn, repository).await?;
    services.retain(|s| !rate_limited.contains(&s.project));
    Ok(services)
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
    pub async fn accept_webhook(&self, delivery: &WebhookDelivery) -> Result<WebhookOutcome> {
        self.write(async |conn| accept_webhook(conn, delivery).await).await
    }
    pub async fn delivery(&self, id: &str) -> Result<Delivery> {
        self.read(async |conn| get_delivery(conn, id).await).await
    }
    pub async fn list_deliveries(&self, project: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
        self.read(async |conn| list_deliveries(conn, project, limit).await)
            .await
    }
}
