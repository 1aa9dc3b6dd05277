//! Deployments orphaned by the queue: `pending` or `running`, but no live `deploy` job drives
//! them (or a `canary` whose current step's analysis the queue lost).
//!
//! What leaves one behind: a separate queue (Redis) that lost its data; a worker `kill -9`ed during
//! the *last* attempt of a deploy job (the reaper marks the job dead once its lease lapses, and
//! the handler never recorded the failure); a deploy job cancelled through the queue's API while
//! its deployment waited. Left alone, the deployment stays `running` for ever while nothing
//! deploys it. A reconciliation pass ([`Store::reconcile_deployments`], run by the scheduler
//! beside [`Store::reconcile_orphans`]) raises the queue's id floors (`runs.rs`; deployments' job
//! ids are among them), then looks at a bounded page of deployments `pending`, `running` or
//! `canary` and unchanged for longer than a grace period, and settles each whose `job_id` names:
//!
//! - no job of the queue (lost), or another job (the id was handed out again: not a `deploy` of
//!   the deployment's project, service and environment naming this deployment — or, for a
//!   pipeline's deployment, which its deploy job created, its release's commit): a newer
//!   deployment of the service in the environment supersedes it (its deploy would have);
//!   otherwise it deploys again — back to `pending` with a fresh `deploy` job (`deployment:
//!   Some(id)`, its release's commit) recorded as its `job_id`, as `create_deployment` does;
//! - a dead job: `failed`, "its deploy job died: <the job's last error>; deploy again";
//! - a cancelled job: `failed`, "its deploy job was cancelled (…); deploy again";
//! - a completed job, the deployment still pending or running: `failed`, saying so.
//!
//! Each settlement is one transaction that first takes the deployment by its `(status, job_id,
//! updated_at)` as read — on PostgreSQL holding its row until commit — and enqueues only then, so
//! reconcilers running at once settle it once, and a deploy that recorded progress in the
//! meantime wins. Settlements are audited as `system:reconciler` with the reason. Dead, cancelled
//! and completed jobs happen on every backend; lost and reused ones only with a separate queue.
//!
//! A `canary` deployment's `job_id` is its finished deploy; what drives it is the analysis of its
//! current step (`canary-analyze`, unique key [`CanaryAnalyze::unique_key`]), the step being the
//! position of its `canary_percent` in the spec's strictly increasing `deploy.steps`. Once that
//! analysis is overdue (the step's window and the grace have passed since the deployment last
//! changed), the pass enqueues it again under the same unique key: the queue answers with the
//! existing job while there is one, live or ended (until finished jobs are pruned), so only a
//! lost analysis is enqueued anew — once, however many reconcilers run — and audited. A canary
//! whose analysis *died* or was *cancelled* is left alone: ending it needs the target (the canary
//! keeps its share of the traffic until aborted there), which the store does not drive; an
//! operator retries the analysis job or deploys again. A canary whose percent is no step of the
//! current spec (the spec changed since) is left alone too.

use std::time::Duration;

use enclii_domain::jobs::{CanaryAnalyze, Deploy};
use enclii_queue::trace::without_trace;
use enclii_queue::{JobKind, JobRecord, JobState, NewJob};
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::orphans::RECONCILER;
use crate::releases::get_release;
use crate::{Store, now_ms};

/// Why an unfinished deployment has nothing driving it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentOrphanReason {
    /// The queue has no job with the deployment's job id (it lost its data), or it names none.
    Lost,
    /// The queue's job with that id is not this deployment's deploy: the id was handed out again.
    NotItsJob,
    /// Its deploy job ended in this state (with its last error) while the deployment was pending
    /// or running.
    Ended { state: JobState, error: Option<String> },
    /// The analysis of this canary step (an index into the spec's `deploy.steps`) was missing
    /// from the queue.
    AnalysisLost { step: u32 },
}

impl std::fmt::Display for DeploymentOrphanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lost => f.write_str("its deploy job was lost from the queue"),
            Self::NotItsJob => f.write_str("its job id now names another job (the queue reused it)"),
            Self::Ended { state, error } => match (state, error) {
                (JobState::Dead, Some(error)) => write!(f, "its deploy job died: {error}"),
                (JobState::Dead, None) => f.write_str("its deploy job died"),
                (JobState::Cancelled, Some(error)) => write!(f, "its deploy job was cancelled ({error})"),
                (JobState::Cancelled, None) => f.write_str("its deploy job was cancelled"),
                (state, _) => write!(
                    f,
                    "its deploy job ended ({}) without recording how the deployment ended",
                    state.as_str()
                ),
            },
            Self::AnalysisLost { step } => write!(
                f,
                "the analysis of its canary step {} was lost from the queue",
                step + 1
            ),
        }
    }
}

/// What a pass did with one orphaned deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentSettlement {
    /// Back to `pending`, driven by this fresh deploy job.
    Redeployed { job: i64 },
    /// A newer deployment of the service in the environment takes its place.
    Superseded { by: i64 },
    /// Ended `failed`; its detail says why.
    Failed,
    /// Its canary step's analysis was enqueued again: this job.
    Reanalyzed { job: i64 },
}

/// One orphaned deployment, as it was found, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentOrphan {
    pub deployment: Deployment,
    pub reason: DeploymentOrphanReason,
    pub settled: DeploymentSettlement,
}

/// What one pass over the deployments did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentPass {
    /// The queue's id floors given (pipeline, job).
    pub floors: (i64, i64),
    pub orphans: Vec<DeploymentOrphan>,
    /// Deployments that could not be settled (deployment id, why); the next pass over them tries
    /// again.
    pub failed: Vec<(i64, String)>,
    /// Where the next pass continues: unfinished deployments are examined in id order, a page a
    /// pass.
    pub cursor: i64,
}

/// A page of deployments unfinished and unchanged since before `cutoff`, after `cursor` in id
/// order.
async fn unfinished_before(conn: &mut Conn<'_>, cutoff: i64, cursor: i64, limit: usize) -> Result<Vec<Deployment>> {
    query_as::<Deployment>(
        "SELECT * FROM deployments WHERE status IN ('pending', 'running', 'canary') AND updated_at < $1 AND id > $2
         ORDER BY id LIMIT $3",
    )
    .binds((cutoff, cursor, limit as i64))
    .fetch_all(&mut *conn)
    .await
}

/// Takes the deployment for this settlement: only while it is as it was read (same status, same
/// job, unchanged), and — on PostgreSQL — holding its row until commit, so a second reconciler
/// waits and then finds it changed.
async fn claim(conn: &mut Conn<'_>, seen: &Deployment, now: i64) -> Result<bool> {
    let claimed = query(
        "UPDATE deployments SET updated_at = $4
         WHERE id = $1 AND status = $5 AND COALESCE(job_id, 0) = $2 AND updated_at = $3",
    )
    .binds((seen.id, seen.job_id.unwrap_or(0), seen.updated_at, now, seen.status))
    .execute(&mut *conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Settles a pending or running orphan in its own transaction; `None` when another reconciler
/// (or its deploy) got to it first.
async fn settle(
    conn: &mut Conn<'_>,
    seen: &Deployment,
    reason: &DeploymentOrphanReason,
) -> Result<Option<DeploymentSettlement>> {
    let now = now_ms().max(seen.updated_at + 1);
    if !claim(conn, seen, now).await? {
        return Ok(None);
    }
    let entity = seen.id.to_string();
    let project = Some(seen.project.as_str());
    if matches!(reason, DeploymentOrphanReason::Ended { .. }) {
        let detail = format!("{reason}; deploy again");
        query("UPDATE deployments SET status = 'failed', detail = $2, updated_at = $3, finished_at = $3 WHERE id = $1")
            .binds((seen.id, &detail, now))
            .execute(&mut *conn)
            .await?;
        let diff = json!({"status": {"from": seen.status, "to": DeploymentStatus::Failed},
                          "reason": reason.to_string(), "job": seen.job_id, "detail": detail});
        audit(
            conn,
            RECONCILER,
            change("deployment.failed", "deployment", &entity, project, diff),
        )
        .await?;
        return Ok(Some(DeploymentSettlement::Failed));
    }
    // Lost, or not its job: what its deploy would have done — give way to a newer deployment of
    // the service there, or deploy.
    let newer: Option<i64> = query_scalar(
        "SELECT MIN(id) FROM deployments WHERE project = $1 AND environment = $2 AND service = $3 AND id > $4",
    )
    .binds((&seen.project, &seen.environment, &seen.service, seen.id))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(by) = newer {
        let detail = format!("superseded by deployment {by} ({reason})");
        query(
            "UPDATE deployments SET status = 'superseded', detail = $2, updated_at = $3, finished_at = $3 WHERE id = $1",
        )
        .binds((seen.id, &detail, now))
        .execute(&mut *conn)
        .await?;
        let diff = json!({"status": {"from": seen.status, "to": DeploymentStatus::Superseded},
                          "reason": reason.to_string(), "job": seen.job_id, "superseded_by": by});
        let event = change("deployment.superseded", "deployment", &entity, project, diff);
        audit(conn, RECONCILER, event).await?;
        return Ok(Some(DeploymentSettlement::Superseded { by }));
    }
    let release = get_release(conn, seen.release_id).await?;
    let deploy = Deploy {
        service: seen.service.clone(),
        environment: seen.environment.clone(),
        commit: release.git_sha.clone(),
        deployment: Some(seen.id),
    };
    let job = conn.enqueue(NewJob::typed(&seen.project, &deploy)?).await?;
    let detail = format!("deploying again: {reason}");
    query("UPDATE deployments SET status = 'pending', job_id = $2, detail = $3, updated_at = $4 WHERE id = $1")
        .binds((seen.id, job, &detail, now))
        .execute(&mut *conn)
        .await?;
    let diff = json!({"status": {"from": seen.status, "to": DeploymentStatus::Pending},
                      "reason": reason.to_string(), "job": seen.job_id, "new_job": job,
                      "release": release.id, "git_sha": release.git_sha});
    audit(
        conn,
        RECONCILER,
        change("deployment.redeploy", "deployment", &entity, project, diff),
    )
    .await?;
    Ok(Some(DeploymentSettlement::Redeployed { job }))
}

impl Store {
    /// One pass over unfinished deployments (see the module): raises the queue's id floors, then
    /// examines at most `limit` deployments pending, running or canary and unchanged for longer
    /// than `grace`, from `cursor` on (0 to start; pass the returned cursor next time), and
    /// settles the orphans among them.
    pub async fn reconcile_deployments(&self, grace: Duration, cursor: i64, limit: usize) -> Result<DeploymentPass> {
        let floors = self.raise_queue_ids().await?;
        let cutoff = now_ms() - grace.as_millis() as i64;
        let page = self
            .read(async |conn| unfinished_before(conn, cutoff, cursor, limit).await)
            .await?;
        let cursor = match page.last() {
            Some(last) if page.len() == limit => last.id,
            _ => 0,
        };
        let mut pass = DeploymentPass {
            floors,
            cursor,
            ..DeploymentPass::default()
        };
        for deployment in page {
            match self.settle_deployment(&deployment, cutoff).await {
                Ok(Some((reason, settled))) => pass.orphans.push(DeploymentOrphan {
                    deployment,
                    reason,
                    settled,
                }),
                Ok(None) => {}
                // One deployment that cannot be settled must not hold up the others.
                Err(e) => pass.failed.push((deployment.id, e.to_string())),
            }
        }
        Ok(pass)
    }

    async fn settle_deployment(
        &self,
        deployment: &Deployment,
        cutoff: i64,
    ) -> Result<Option<(DeploymentOrphanReason, DeploymentSettlement)>> {
        if deployment.status == DeploymentStatus::Canary {
            let Some(step) = self.overdue_analysis(deployment, cutoff).await? else {
                return Ok(None);
            };
            let reanalyzed = self.reanalyze(deployment, step).await?;
            return Ok(reanalyzed.map(|job| {
                (
                    DeploymentOrphanReason::AnalysisLost { step },
                    DeploymentSettlement::Reanalyzed { job },
                )
            }));
        }
        let Some(reason) = self.without_live_job(deployment).await? else {
            return Ok(None);
        };
        let settled = self.write(async |conn| settle(conn, deployment, &reason).await).await?;
        Ok(settled.map(|settled| (reason, settled)))
    }

    /// Why a pending or running deployment has no live deploy job; `None` while one drives it.
    async fn without_live_job(&self, deployment: &Deployment) -> Result<Option<DeploymentOrphanReason>> {
        let Some(id) = deployment.job_id else {
            return Ok(Some(DeploymentOrphanReason::Lost));
        };
        let Some(job) = self.backend.job(id).await? else {
            return Ok(Some(DeploymentOrphanReason::Lost));
        };
        if !self.deploys(&job, deployment).await? {
            return Ok(Some(DeploymentOrphanReason::NotItsJob));
        }
        Ok(job.state.is_terminal().then_some(DeploymentOrphanReason::Ended {
            state: job.state,
            error: job.last_error,
        }))
    }

    /// Whether `job` is a deploy of `deployment`: of its project, service and environment, and
    /// naming it — or, a pipeline's deploy (which creates its deployment), of its release's commit.
    async fn deploys(&self, job: &JobRecord, deployment: &Deployment) -> Result<bool> {
        if job.kind != Deploy::KIND || job.project != deployment.project {
            return Ok(false);
        }
        let Ok(deploy) = serde_json::from_value::<Deploy>(without_trace(&job.payload).into_owned()) else {
            return Ok(false);
        };
        if deploy.service != deployment.service || deploy.environment != deployment.environment {
            return Ok(false);
        }
        Ok(match deploy.deployment {
            Some(id) => id == deployment.id,
            None => {
                let release = self.release(deployment.release_id).await?;
                release.git_sha.eq_ignore_ascii_case(&deploy.commit)
            }
        })
    }

    /// The canary step whose analysis should have run by `cutoff`: the step the deployment's
    /// percent is at in the current spec, once its window has passed since the step began.
    async fn overdue_analysis(&self, deployment: &Deployment, cutoff: i64) -> Result<Option<u32>> {
        let Some(percent) = deployment.canary_percent else {
            return Ok(None);
        };
        let spec = self
            .service(&deployment.project, &deployment.service)
            .await?
            .typed_spec()?;
        let plan = &spec.spec.deploy;
        let Some(step) = plan.steps.iter().position(|&s| i64::from(s) == i64::from(percent)) else {
            return Ok(None);
        };
        // The deploy handler's default window, when the spec's does not parse.
        let window = plan.analysis.window_duration().unwrap_or(Duration::from_secs(120));
        let due = deployment.updated_at.saturating_add(window.as_millis() as i64);
        Ok((due < cutoff).then_some(step as u32))
    }

    /// Enqueues the analysis of canary step `step` under its unique key: `Some(job)` when the
    /// queue had no such job (it was lost) and this enqueued it (audited), `None` when it has one.
    async fn reanalyze(&self, deployment: &Deployment, step: u32) -> Result<Option<i64>> {
        let analysis = CanaryAnalyze {
            deployment: deployment.id,
            step,
        };
        let job = NewJob::typed(&deployment.project, &analysis)?.unique_key(analysis.unique_key());
        let enqueued = self
            .backend
            .enqueue(vec![job])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("the queue enqueued no job and reported no error".into()))?;
        if enqueued.duplicate {
            return Ok(None);
        }
        let reason = DeploymentOrphanReason::AnalysisLost { step };
        let diff = json!({"reason": reason.to_string(), "step": step, "new_job": enqueued.id,
                          "canary_percent": deployment.canary_percent});
        let entity = deployment.id.to_string();
        let event = change(
            "deployment.reanalyze",
            "deployment",
            &entity,
            Some(&deployment.project),
            diff,
        );
        self.write(async |conn| audit(conn, RECONCILER, event).await).await?;
        Ok(Some(enqueued.id))
    }
}
