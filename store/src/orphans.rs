//! Releases orphaned by a lost queue: `building`, but no live run of the queue builds them.
//!
//! With a separate queue (Redis) the control plane and the queue can part: a Redis restart
//! without persistence empties the queue while releases stay `building`; a transaction that
//! enqueued a run can roll back; a run whose steps found no release ends without finishing it.
//! A reconciliation pass ([`Store::reconcile_orphans`], run by the scheduler) first raises the
//! queue's id sequences above the ids held here, then looks at a bounded page of releases
//! `building` for longer than a grace period, and settles each whose run is missing from the
//! queue, over, or another release's (the id was handed out again): a newer release of the same
//! service, environment and branch supersedes it (as that release's push would have); otherwise
//! its build starts again, on the path every build takes (`releases::start_build`), with a fresh
//! run recorded and audited as `system:reconciler`. Each settlement is one transaction that first
//! claims the release by its `(status, pipeline_id, updated_at)` as read, so several reconcilers
//! at once settle a release once. On a queue in the same database (transactional) this finds
//! nothing, but it reads the same way.

use std::time::Duration;

use enclii_queue::{PipelineRecord, PipelineState};
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::error::Result;
use crate::model::*;
use crate::releases::start_build;
use crate::services::require_service;
use crate::{Store, now_ms};

/// The actor of reconciliation's audit events.
pub const RECONCILER: &str = "system:reconciler";

/// Why a building release has no live run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrphanReason {
    /// The queue has no run with the release's pipeline id (it lost its data, or the run was
    /// never committed).
    Lost,
    /// Its run ended in this state while the release was still building.
    Ended(PipelineState),
    /// The queue's run with that id builds another service or commit: the id was handed out again.
    NotItsRun,
}

impl std::fmt::Display for OrphanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrphanReason::Lost => f.write_str("its pipeline was lost from the queue"),
            OrphanReason::Ended(state) => write!(f, "its pipeline ended ({}) without finishing it", state.as_str()),
            OrphanReason::NotItsRun => f.write_str("its pipeline id now names another run (the queue reused it)"),
        }
    }
}

/// What a pass did with one orphaned release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Built again: the new run.
    Rebuilt { pipeline: i64 },
    /// A newer release of the same service, environment and branch took its place.
    Superseded { by: i64 },
}

/// One orphaned release, as it was found, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub release: Release,
    pub reason: OrphanReason,
    pub settled: Settlement,
}

/// What one reconciliation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcilePass {
    /// The queue's id floors given (pipeline, job).
    pub floors: (i64, i64),
    pub orphans: Vec<Orphan>,
    /// Releases that could not be settled (release id, why); the next pass over them tries again.
    pub failed: Vec<(i64, String)>,
    /// Where the next pass continues: building releases are examined in id order, a page a pass.
    pub cursor: i64,
}

/// A page of releases building since before `cutoff`, after `cursor` in id order.
async fn building_before(conn: &mut Conn<'_>, cutoff: i64, cursor: i64, limit: usize) -> Result<Vec<Release>> {
    query_as::<Release>(
        "SELECT * FROM releases WHERE status = 'building' AND updated_at < $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .binds((cutoff, cursor, limit as i64))
    .fetch_all(&mut *conn)
    .await
}

/// Takes the release for this settlement: only while it is as it was read (still building, same
/// run, unchanged), and — on PostgreSQL — holding its row until commit, so a second reconciler
/// waits and then finds it changed.
async fn claim(conn: &mut Conn<'_>, seen: &Release) -> Result<bool> {
    let claimed = query(
        "UPDATE releases SET updated_at = $4
         WHERE id = $1 AND status = 'building' AND COALESCE(pipeline_id, 0) = $2 AND updated_at = $3",
    )
    .binds((
        seen.id,
        seen.pipeline_id.unwrap_or(0),
        seen.updated_at,
        now_ms().max(seen.updated_at + 1),
    ))
    .execute(&mut *conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Settles one orphan in its own transaction; `None` when another reconciler (or a build) got to
/// it first. `deploys` says whether its lost run deployed the release when ready.
async fn settle(
    conn: &mut Conn<'_>,
    seen: &Release,
    reason: &OrphanReason,
    deploys: bool,
) -> Result<Option<Settlement>> {
    if !claim(conn, seen).await? {
        return Ok(None);
    }
    let newer: Option<i64> = query_scalar(
        "SELECT MAX(id) FROM releases WHERE project = $1 AND service = $2 AND environment = $3 AND branch = $4 AND id > $5",
    )
    .binds((&seen.project, &seen.service, &seen.environment, &seen.branch, seen.id))
    .fetch_one(&mut *conn)
    .await?;
    let entity = seen.id.to_string();
    if let Some(by) = newer {
        query("UPDATE releases SET status = 'superseded', failure = $2, updated_at = $3 WHERE id = $1")
            .binds((seen.id, format!("superseded by release {by} ({reason})"), now_ms()))
            .execute(&mut *conn)
            .await?;
        let diff = json!({"reason": reason.to_string(), "pipeline": seen.pipeline_id, "superseded_by": by});
        let event = change("release.supersede", "release", &entity, Some(&seen.project), diff);
        audit(conn, RECONCILER, event).await?;
        return Ok(Some(Settlement::Superseded { by }));
    }
    let service = require_service(conn, &seen.project, &seen.service).await?;
    let trigger = BuildTrigger {
        project: seen.project.clone(),
        service: seen.service.clone(),
        git_sha: seen.git_sha.clone(),
        branch: seen.branch.clone(),
        deploy_to: deploys.then(|| seen.environment.clone()),
        trigger: seen.trigger,
    };
    let (_, run) = start_build(conn, &service, &trigger, &seen.environment, true).await?;
    let diff = json!({"reason": reason.to_string(), "pipeline": seen.pipeline_id, "new_pipeline": run.id,
                      "git_sha": seen.git_sha, "deploy": deploys});
    let event = change("release.rebuild", "release", &entity, Some(&seen.project), diff);
    audit(conn, RECONCILER, event).await?;
    Ok(Some(Settlement::Rebuilt { pipeline: run.id }))
}

impl Store {
    /// One reconciliation pass (see the module): raises the queue's id floors, then examines at
    /// most `limit` releases building for longer than `grace` from `cursor` on (0 to start; pass
    /// the returned cursor next time) and settles the orphans among them.
    pub async fn reconcile_orphans(&self, grace: Duration, cursor: i64, limit: usize) -> Result<ReconcilePass> {
        let floors = self.raise_queue_ids().await?;
        let cutoff = now_ms() - grace.as_millis() as i64;
        let page = self
            .read(async |conn| building_before(conn, cutoff, cursor, limit).await)
            .await?;
        let cursor = match page.last() {
            Some(last) if page.len() == limit => last.id,
            _ => 0,
        };
        let mut pass = ReconcilePass {
            floors,
            cursor,
            ..ReconcilePass::default()
        };
        for release in page {
            let settled = match self.orphaned(&release, cutoff).await {
                Ok(Some((reason, deploys))) => self
                    .write(async |conn| settle(conn, &release, &reason, deploys).await)
                    .await
                    .map(|settled| settled.map(|settled| (reason, settled))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match settled {
                Ok(Some((reason, settled))) => pass.orphans.push(Orphan {
                    release,
                    reason,
                    settled,
                }),
                Ok(None) => {}
                // One release that cannot be settled must not hold up the others.
                Err(e) => pass.failed.push((release.id, e.to_string())),
            }
        }
        Ok(pass)
    }

    /// Why `release` has no live run, and whether that run deployed it; `None` while its run
    /// builds it (or ended after `cutoff`: the step ending it may not have recorded it yet).
    async fn orphaned(&self, release: &Release, cutoff: i64) -> Result<Option<(OrphanReason, bool)>> {
        // Webhook builds always deploy; an API build, when its own run says so.
        let mut deploys = release.trigger != ReleaseTrigger::Api;
        let Some(id) = release.pipeline_id else {
            return Ok(Some((OrphanReason::Lost, deploys)));
        };
        let Some(run) = self.backend.pipeline(id).await? else {
            return Ok(Some((OrphanReason::Lost, deploys)));
        };
        let its_own = run.project == release.project
            && self
                .run_subject(&run)
                .await?
                .is_some_and(|subject| subject.builds(&release.service, &release.git_sha));
        if !its_own {
            return Ok(Some((OrphanReason::NotItsRun, deploys)));
        }
        deploys |= deploys_when_ready(&run);
        let ended_long_ago = run.finished_at.is_some_and(|at| at.timestamp_millis() < cutoff);
        Ok(
            (run.state != PipelineState::Running && ended_long_ago)
                .then_some((OrphanReason::Ended(run.state), deploys)),
        )
    }
}

fn deploys_when_ready(run: &PipelineRecord) -> bool {
    run.steps.iter().any(|step| step.name == "deploy")
}
