//! Deleting a service or a project leaves nothing behind: the running work is cancelled first,
//! then, in one transaction, the rows go and a `teardown` job is enqueued for every place the
//! service ran (its environment and each environment it was deployed to, previews included). The
//! jobs remove containers or Kubernetes objects, routes and volumes (unless kept) from the
//! target; they are idempotent and visible in the queue (`GET /v1/jobs/{id}`) while they run.

use enclii_domain::jobs::Teardown;
use enclii_queue::{JobFilter, JobState, NewJob};
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_scalar};
use crate::error::Result;
use crate::projects::require_project;
use crate::services::require_service;
use crate::{Store, now_ms};

/// What a deletion left for the target to remove.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Deletion {
    /// Queued or running jobs of the deleted resource that were cancelled first.
    pub cancelled_jobs: Vec<i64>,
    /// The `teardown` jobs, one per (environment, service) that ran on the target.
    pub teardown_jobs: Vec<i64>,
}

/// Every (environment, service) of `project` (of one `service` only, if given) that may have
/// something on the target: each service's environment and every environment it was deployed to.
async fn placements(conn: &mut Conn<'_>, project: &str, service: Option<&str>) -> Result<Vec<(String, String)>> {
    crate::db::query_as::<(String, String)>(
        "SELECT environment, name FROM services WHERE project = $1 AND ($2 IS NULL OR name = $2)
         UNION
         SELECT environment, service FROM deployments WHERE project = $1 AND ($2 IS NULL OR service = $2)
         ORDER BY 1, 2",
    )
    .binds((project, service))
    .fetch_all(&mut *conn)
    .await
}

async fn enqueue_teardowns(
    conn: &mut Conn<'_>,
    project: &str,
    placements: Vec<(String, String)>,
    whole_environment: bool,
    keep_volumes: bool,
) -> Result<Vec<i64>> {
    let mut jobs = Vec::new();
    for (environment, service) in placements {
        let job = Teardown {
            service,
            environment,
            whole_environment,
            keep_volumes,
        };
        jobs.push(conn.enqueue(NewJob::typed(project, &job)?).await?);
    }
    Ok(jobs)
}

pub(crate) async fn delete_service(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
    keep_volumes: bool,
) -> Result<Vec<i64>> {
    require_service(conn, project, name).await?;
    let placements = placements(conn, project, Some(name)).await?;
    query("DELETE FROM services WHERE project = $1 AND name = $2")
        .binds((project, name))
        .execute(&mut *conn)
        .await?;
    // A service created again under the name starts without the old one's secrets.
    query("DELETE FROM secrets WHERE project = $1 AND service = $2")
        .binds((project, name))
        .execute(&mut *conn)
        .await?;
    let teardown = enqueue_teardowns(conn, project, placements, false, keep_volumes).await?;
    let entity = format!("{project}/{name}");
    let diff = json!({"keep_volumes": keep_volumes, "teardown_jobs": teardown});
    audit(
        conn,
        actor,
        change("service.delete", "service", &entity, Some(project), diff),
    )
    .await?;
    Ok(teardown)
}

pub(crate) async fn delete_project(
    conn: &mut Conn<'_>,
    actor: &str,
    slug: &str,
    keep_volumes: bool,
) -> Result<Vec<i64>> {
    require_project(conn, slug).await?;
    let placements = placements(conn, slug, None).await?;
    query("DELETE FROM projects WHERE slug = $1")
        .bind(slug)
        .execute(&mut *conn)
        .await?;
    // Whoever creates the slug again must not inherit its members or its tokens.
    query("DELETE FROM role_bindings WHERE project = $1")
        .bind(slug)
        .execute(&mut *conn)
        .await?;
    query("UPDATE api_tokens SET revoked_at = $2 WHERE project = $1 AND revoked_at IS NULL")
        .binds((slug, now_ms()))
        .execute(&mut *conn)
        .await?;
    let teardown = enqueue_teardowns(conn, slug, placements, true, keep_volumes).await?;
    let diff = json!({"keep_volumes": keep_volumes, "teardown_jobs": teardown});
    audit(conn, actor, change("project.delete", "project", slug, Some(slug), diff)).await?;
    Ok(teardown)
}

/// Whether a queued or running job belongs to `service` (of its project): its payload names the
/// service, or one of the service's releases.
fn concerns(payload: &serde_json::Value, service: &str, releases: &[i64]) -> bool {
    payload.get("service").and_then(|s| s.as_str()) == Some(service)
        || payload
            .get("release")
            .and_then(|r| r.as_i64())
            .is_some_and(|r| releases.contains(&r))
}

impl Store {
    /// Cancels the project's queued and running work (only `service`'s, if given) and returns the
    /// cancelled jobs. A running job is told to stop at its next heartbeat.
    async fn cancel_work(&self, project: &str, service: Option<&str>) -> Result<Vec<i64>> {
        let releases = match service {
            Some(service) => {
                self.read(async |conn| {
                    query_scalar::<i64>("SELECT id FROM releases WHERE project = $1 AND service = $2")
                        .binds((project, service))
                        .fetch_all(&mut *conn)
                        .await
                })
                .await?
            }
            None => vec![],
        };
        let filter = JobFilter {
            states: vec![
                JobState::Pending,
                JobState::Scheduled,
                JobState::Available,
                JobState::Running,
            ],
            project: Some(project.to_string()),
            limit: 100_000,
            ..JobFilter::default()
        };
        let mut cancelled = Vec::new();
        for job in self.queue().list_jobs(&filter).await? {
            if service.is_none_or(|s| concerns(&job.payload, s, &releases)) {
                self.queue().cancel(job.id).await?;
                cancelled.push(job.id);
            }
        }
        Ok(cancelled)
    }

    /// Deletes a service: cancels its work, removes its rows and enqueues its teardown.
    pub async fn delete_service(&self, actor: &str, project: &str, name: &str, keep_volumes: bool) -> Result<Deletion> {
        self.read(async |conn| require_service(conn, project, name).await.map(drop))
            .await?;
        let cancelled_jobs = self.cancel_work(project, Some(name)).await?;
        let teardown_jobs = self
            .write(async |conn| delete_service(conn, actor, project, name, keep_volumes).await)
            .await?;
        Ok(Deletion {
            cancelled_jobs,
            teardown_jobs,
        })
    }

    /// Deletes a project: cancels all its work, removes its rows (members, tokens revoked) and
    /// enqueues the teardown of every environment its services ran in.
    pub async fn delete_project(&self, actor: &str, slug: &str, keep_volumes: bool) -> Result<Deletion> {
        self.read(async |conn| require_project(conn, slug).await.map(drop))
            .await?;
        let cancelled_jobs = self.cancel_work(slug, None).await?;
        let teardown_jobs = self
            .write(async |conn| delete_project(conn, actor, slug, keep_volumes).await)
            .await?;
        Ok(Deletion {
            cancelled_jobs,
            teardown_jobs,
        })
    }
}
