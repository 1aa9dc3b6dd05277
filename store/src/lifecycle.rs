//! Deleting a service, an environment or a project leaves nothing behind: the running work is
//! cancelled first, then, in one transaction, the rows go and a `teardown` job is enqueued for
//! every place a service ran (its environment and each environment it was deployed to, previews
//! included). The jobs remove containers or Kubernetes objects, routes and volumes (unless kept)
//! from the target; they are idempotent and visible in the queue (`GET /v1/jobs/{id}`) while they
//! run. An environment goes only once no service is at home in it.

use enclii_domain::jobs::{AddonRemove, PreviewTeardown, Teardown};
use enclii_queue::{JobFilter, JobKind, JobRecord, JobState, NewJob};
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, Dialect, query, query_scalar};
use crate::deployments::{forget_environment, tear_down_deployments};
use crate::error::{Result, StoreError};
use crate::projects::{get_environment, require_project};
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

/// Every (environment, service) of `project` (of one `service`, in one `environment` only, if
/// given) that may have something on the target: each service's environment and every
/// environment it was deployed to.
async fn placements(
    conn: &mut Conn<'_>,
    project: &str,
    service: Option<&str>,
    environment: Option<&str>,
) -> Result<Vec<(String, String)>> {
    crate::db::query_as::<(String, String)>(
        "SELECT environment, name FROM services
         WHERE project = $1 AND ($2 IS NULL OR name = $2) AND ($3 IS NULL OR environment = $3)
         UNION
         SELECT environment, service FROM deployments
         WHERE project = $1 AND ($2 IS NULL OR service = $2) AND ($3 IS NULL OR environment = $3)
         ORDER BY 1, 2",
    )
    .binds((project, service, environment))
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
    let placements = placements(conn, project, Some(name), None).await?;
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
    let placements = placements(conn, slug, None, None).await?;
    crate::addons::remove_addons_of(conn, slug, None, keep_volumes).await?;
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

/// Refuses to delete an environment that does not exist (404) or that a service calls home
/// (`metadata.environment`, a foreign key): such a service would be left without a place to
/// build and deploy to, so it must be deleted or moved first. Nothing else protects an
/// environment: `prod` is no more special here than `dev`, and a project may be left without any
/// (services then need one created before they can be applied).
async fn require_deletable_environment(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<()> {
    require_project(conn, project).await?;
    get_environment(conn, project, name).await?;
    let homed: Vec<String> =
        query_scalar("SELECT name FROM services WHERE project = $1 AND environment = $2 ORDER BY name")
            .binds((project, name))
            .fetch_all(&mut *conn)
            .await?;
    if homed.is_empty() {
        return Ok(());
    }
    let names = homed.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    let (noun, them, spec) = match homed.len() {
        1 => ("service", "it", "its spec"),
        _ => ("services", "them", "each spec"),
    };
    Err(StoreError::Conflict(format!(
        "environment `{name}` of project `{project}` is home to {noun} {names}; delete {them} \
         (DELETE /v1/projects/{project}/services/{{service}}) or move {them} to another environment (apply \
         {spec} with another `metadata.environment`) first, then delete the environment"
    )))
}

/// On PostgreSQL, holds the environment's row until the deletion commits: a service applied to
/// it meanwhile waits, then fails its foreign key, and is never left homeless. (On SQLite,
/// `BEGIN IMMEDIATE` already serialises writers.)
async fn lock_environment(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<()> {
    if conn.dialect() == Dialect::Postgres {
        query("SELECT name FROM environments WHERE project = $1 AND name = $2 FOR UPDATE")
            .binds((project, name))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(crate) async fn delete_environment(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
    keep_volumes: bool,
    cancelled: &[i64],
) -> Result<Vec<i64>> {
    lock_environment(conn, project, name).await?;
    require_deletable_environment(conn, project, name).await?;
    let placements = placements(conn, project, None, Some(name)).await?;
    tear_down_deployments(conn, project, name, None).await?;
    // History stays (releases, runs, costs), but nothing is left waiting for work that was
    // cancelled: a release still building is superseded (the reconciler does not rebuild it), a
    // job run still queued or running is cancelled.
    let now = now_ms();
    query(
        "UPDATE releases SET status = 'superseded', failure = $3, updated_at = $4
         WHERE project = $1 AND environment = $2 AND status = 'building'",
    )
    .binds((
        project,
        name,
        format!("superseded: environment `{name}` was deleted"),
        now,
    ))
    .execute(&mut *conn)
    .await?;
    query(
        "UPDATE job_runs SET status = 'cancelled', detail = $3, finished_at = $4
         WHERE project = $1 AND environment = $2 AND status IN ('queued', 'running')",
    )
    .binds((project, name, format!("environment `{name}` was deleted"), now))
    .execute(&mut *conn)
    .await?;
    // Routes and secrets go with it: an environment created again under the name starts empty.
    forget_environment(conn, project, name, keep_volumes).await?;
    let teardown = enqueue_teardowns(conn, project, placements, true, keep_volumes).await?;
    let entity = format!("{project}/{name}");
    let diff = json!({"keep_volumes": keep_volumes, "teardown_jobs": teardown, "cancelled_jobs": cancelled});
    audit(
        conn,
        actor,
        change("environment.delete", "environment", &entity, Some(project), diff),
    )
    .await?;
    Ok(teardown)
}

/// Kinds a deletion never cancels: they remove what was deployed (what the deletion wants done,
/// and idempotent), and a removal that an earlier deletion queued has no other job to finish it.
const REMOVALS: [&str; 3] = [Teardown::KIND, PreviewTeardown::KIND, AddonRemove::KIND];

/// The queued and running work a deletion cancels first, told by what each job's payload names.
enum Work {
    /// Every job of the project.
    Project,
    /// The service's jobs: the payload names the service or one of its releases.
    Service { name: String, releases: Vec<i64> },
    /// The environment's jobs: the payload names the environment or one of its deployments
    /// (canary analyses), or the job is a step of a run building a release for it.
    Environment {
        name: String,
        deployments: Vec<i64>,
        pipelines: Vec<i64>,
    },
}

impl Work {
    async fn of_service(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Work> {
        let releases = query_scalar::<i64>("SELECT id FROM releases WHERE project = $1 AND service = $2")
            .binds((project, name))
            .fetch_all(&mut *conn)
            .await?;
        Ok(Work::Service {
            name: name.to_string(),
            releases,
        })
    }

    async fn of_environment(conn: &mut Conn<'_>, project: &str, name: &str) -> Result<Work> {
        let deployments = query_scalar::<i64>("SELECT id FROM deployments WHERE project = $1 AND environment = $2")
            .binds((project, name))
            .fetch_all(&mut *conn)
            .await?;
        let pipelines = query_scalar::<i64>(
            "SELECT pipeline_id FROM releases
             WHERE project = $1 AND environment = $2 AND status = 'building' AND pipeline_id IS NOT NULL",
        )
        .binds((project, name))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Work::Environment {
            name: name.to_string(),
            deployments,
            pipelines,
        })
    }

    /// Whether a queued or running job of the project is this work.
    fn concerns(&self, job: &JobRecord) -> bool {
        if REMOVALS.contains(&job.kind.as_str()) {
            return false;
        }
        let names = |key: &str, value: &str| job.payload.get(key).and_then(|v| v.as_str()) == Some(value);
        let names_one_of = |key: &str, ids: &[i64]| {
            job.payload
                .get(key)
                .and_then(|v| v.as_i64())
                .is_some_and(|id| ids.contains(&id))
        };
        match self {
            Work::Project => true,
            Work::Service { name, releases } => names("service", name) || names_one_of("release", releases),
            Work::Environment {
                name,
                deployments,
                pipelines,
            } => {
                names("environment", name)
                    || names_one_of("deployment", deployments)
                    || job.pipeline.is_some_and(|p| pipelines.contains(&p))
            }
        }
    }
}

impl Store {
    /// Cancels the project's queued and running `work` and returns the cancelled jobs. A running
    /// job is told to stop at its next heartbeat.
    async fn cancel_work(&self, project: &str, work: &Work) -> Result<Vec<i64>> {
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
            if work.concerns(&job) {
                self.queue().cancel(job.id).await?;
                cancelled.push(job.id);
            }
        }
        Ok(cancelled)
    }

    /// Deletes a service: cancels its work, removes its rows and enqueues its teardown.
    pub async fn delete_service(&self, actor: &str, project: &str, name: &str, keep_volumes: bool) -> Result<Deletion> {
        let work = self
            .read(async |conn| {
                require_service(conn, project, name).await?;
                Work::of_service(conn, project, name).await
            })
            .await?;
        let cancelled_jobs = self.cancel_work(project, &work).await?;
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
        let cancelled_jobs = self.cancel_work(slug, &Work::Project).await?;
        let teardown_jobs = self
            .write(async |conn| delete_project(conn, actor, slug, keep_volumes).await)
            .await?;
        Ok(Deletion {
            cancelled_jobs,
            teardown_jobs,
        })
    }

    /// Deletes an environment no service calls home: cancels its work, ends its deployments,
    /// removes its routes, secrets and row, and enqueues the teardown of every service deployed
    /// there (the whole environment on the target; volumes too unless `keep_volumes`).
    pub async fn delete_environment(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        keep_volumes: bool,
    ) -> Result<Deletion> {
        // Refused before anything is cancelled; checked again in the deletion's transaction.
        let work = self
            .read(async |conn| {
                require_deletable_environment(conn, project, name).await?;
                Work::of_environment(conn, project, name).await
            })
            .await?;
        let cancelled_jobs = self.cancel_work(project, &work).await?;
        let teardown_jobs = self
            .write(async |conn| delete_environment(conn, actor, project, name, keep_volumes, &cancelled_jobs).await)
            .await?;
        Ok(Deletion {
            cancelled_jobs,
            teardown_jobs,
        })
    }
}
