//! Which release a build step works on: the release its run builds, found by the run's pipeline
//! id and checked against the service and commit the step's payload names.
//!
//! Two things make a pipeline id alone unsafe when the queue is separate (Redis): the run is
//! enqueued just before the transaction that records its release commits, so a worker can claim
//! its first step before the release names it; and a queue that lost its data hands ids out
//! again, so an id may still name an old release of another service or commit. A step in either
//! case waits (while its job is young) for its release to be recorded, and otherwise does
//! nothing to any release: it stops the rest of its run, so that no later step is claimed for
//! nothing — on a queue in the same database the run's steps only ever exist with their release,
//! and a superseded run's later steps are cancelled with it.

use std::time::Duration;

use enclii_domain::pipeline::RunSubject;
use enclii_queue::{Backend, CancelOutcome, ClaimedJob, PipelineId};
use enclii_store::{Release, ReleaseStatus, RunRelease, Store, StoreError};

pub use enclii_store::RECORD_WAIT;
const POLL: Duration = Duration::from_millis(50);

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepRelease {
    /// Its run's release, building: do the step's work on it.
    Work(Box<Release>),
    /// Nothing to do, and why. `stop_run`: no release is this run's, so its later steps have
    /// nothing to do either.
    Skip { reason: String, stop_run: bool },
}

/// The release the step `job` of the run `pipeline` (building `run`) works on, waiting up to
/// `wait` after the job was enqueued for a release that is not recorded yet (only with a
/// separate queue: in the same database, a run's steps commit with its release).
pub async fn release_for_step(
    store: &Store,
    pipeline: PipelineId,
    job: &ClaimedJob,
    run: &RunSubject,
    wait: Duration,
) -> Result<StepRelease, StoreError> {
    let deadline = job.created_at + chrono::Duration::from_std(wait).unwrap_or_default();
    loop {
        let found = store.release_of_run(pipeline, run).await?;
        let young = store.separate_queue() && chrono::Utc::now() < deadline;
        match found {
            RunRelease::Ours(release) if release.status == ReleaseStatus::Building => {
                return Ok(StepRelease::Work(Box::new(release)));
            }
            RunRelease::Ours(release) => {
                return Ok(StepRelease::Skip {
                    reason: format!("release {} is {}, no longer building", release.id, release.status),
                    stop_run: false,
                });
            }
            RunRelease::NotOurs(_) | RunRelease::Missing if young => tokio::time::sleep(POLL).await,
            RunRelease::NotOurs(release) => {
                return Ok(StepRelease::Skip {
                    reason: format!(
                        "not this run's release: pipeline {pipeline} names release {} ({} at {}), this run builds {} at {} (the queue handed the id out again)",
                        release.id, release.service, release.git_sha, run.service, run.commit
                    ),
                    stop_run: true,
                });
            }
            RunRelease::Missing => {
                return Ok(StepRelease::Skip {
                    reason: format!("no release is built by pipeline {pipeline} (any more)"),
                    stop_run: true,
                });
            }
        }
    }
}

/// Cancels the steps of `pipeline` that have not finished, but `job` (which is ending as skipped):
/// cancelling one queued step ends the run and cancels the rest with it.
pub async fn stop_rest_of_run(queue: &dyn Backend, pipeline: PipelineId, job: i64) -> Result<(), StoreError> {
    let Some(run) = queue.pipeline(pipeline).await? else {
        return Ok(());
    };
    for step in run.steps.iter().filter(|s| s.job != job && !s.state.is_terminal()) {
        if let CancelOutcome::Cancelled = queue.cancel(step.job).await? {
            break;
        }
    }
    Ok(())
}
