//! Runs and releases: which release a pipeline run builds, and the ids the control plane holds.
//!
//! A pipeline id alone does not name a release safely when the queue is separate: Redis restarted
//! without persistence loses its id sequences and hands ids out again, while `releases.pipeline_id`
//! still holds the old ones. So a release is a run's only when its service and commit are what the
//! run's steps say they build ([`RunSubject`]), and the queue's sequences are raised above every
//! pipeline and job id stored here ([`Store::raise_queue_ids`]) when the store opens and at every
//! reconciliation pass (`orphans.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use enclii_domain::pipeline::RunSubject;
use enclii_queue::PipelineRecord;

use crate::Store;
use crate::db::{Conn, query_scalar};
use crate::error::{Result, StoreError};
use crate::model::Release;
use crate::releases::release_for_pipeline;

/// What a pipeline id leads to, checked against what its run builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunRelease {
    /// The run's release.
    Ours(Release),
    /// A release of another service or commit holds this id: the queue handed it out again.
    /// Never touch it.
    NotOurs(Release),
    /// No release names this run (any more, or not yet: with a separate queue the run is
    /// enqueued just before the transaction that records its release commits).
    Missing,
}

pub(crate) async fn release_of_run(conn: &mut Conn<'_>, pipeline: i64, run: &RunSubject) -> Result<RunRelease> {
    match release_for_pipeline(conn, pipeline).await {
        Ok(release) if run.builds(&release.service, &release.git_sha) => Ok(RunRelease::Ours(release)),
        Ok(release) => Ok(RunRelease::NotOurs(release)),
        Err(StoreError::NotFound(_)) => Ok(RunRelease::Missing),
        Err(e) => Err(e),
    }
}

/// The highest pipeline id and job id the control plane holds (0 when none): the releases' runs;
/// the jobs of release steps, pipeline deployments, job runs and job logs. Each is one `MAX`
/// through an index.
pub(crate) async fn id_floors(conn: &mut Conn<'_>) -> Result<(i64, i64)> {
    let pipeline: Option<i64> = query_scalar("SELECT MAX(pipeline_id) FROM releases")
        .fetch_one(&mut *conn)
        .await?;
    let mut job = 0;
    for sql in [
        "SELECT MAX(job_id) FROM release_steps",
        "SELECT MAX(job_id) FROM deployments",
        "SELECT MAX(queue_job_id) FROM job_runs",
        "SELECT MAX(job_id) FROM job_logs",
    ] {
        let highest: Option<i64> = query_scalar(sql).fetch_one(&mut *conn).await?;
        job = job.max(highest.unwrap_or(0));
    }
    Ok((pipeline.unwrap_or(0), job))
}

/// How long after its job was enqueued a worker waits for the rows that job belongs to (with a
/// separate queue the job can be claimed before the transaction that enqueued it commits).
pub const RECORD_WAIT: Duration = Duration::from_secs(15);
const RECORD_POLL: Duration = Duration::from_millis(50);

impl Store {
    /// Whether the queue lives outside the control plane's database (Redis): its jobs are
    /// enqueued just before the rows they belong to commit, and it can lose its data alone.
    pub fn separate_queue(&self) -> bool {
        !self.same_database
    }

    /// `read`, retried while it finds nothing ([`StoreError::NotFound`]) and the job that names
    /// the record was enqueued less than [`RECORD_WAIT`] ago, with a separate queue only (in the
    /// same database a job commits with its rows). A record still missing then was never
    /// committed (its transaction rolled back): the last `NotFound` is returned.
    pub async fn read_enqueued_with<T, F, Fut>(&self, enqueued_at: DateTime<Utc>, mut read: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = enqueued_at + chrono::Duration::from_std(RECORD_WAIT).unwrap_or_default();
        loop {
            match read().await {
                Err(StoreError::NotFound(_)) if self.separate_queue() && Utc::now() < deadline => {
                    tokio::time::sleep(RECORD_POLL).await;
                }
                other => return other,
            }
        }
    }

    /// The release `pipeline` builds, if it is the release of `run` (see [`RunRelease`]).
    pub async fn release_of_run(&self, pipeline: i64, run: &RunSubject) -> Result<RunRelease> {
        self.read(async |conn| release_of_run(conn, pipeline, run).await).await
    }

    /// What a run builds, from its first step's payload; `None` when the run is not a build (or
    /// its step is gone).
    pub async fn run_subject(&self, run: &PipelineRecord) -> Result<Option<RunSubject>> {
        let Some(step) = run.steps.first() else {
            return Ok(None);
        };
        Ok(self
            .backend
            .job(step.job)
            .await?
            .and_then(|job| RunSubject::of_payload(&job.payload)))
    }

    /// The release a run builds, only if it is that run's: an operator cancelling pipeline 95
    /// must never fail a release whose stale `pipeline_id` is 95 too.
    pub async fn release_of_pipeline(&self, run: &PipelineRecord) -> Result<Option<Release>> {
        let Some(subject) = self.run_subject(run).await? else {
            return Ok(None);
        };
        match self.release_of_run(run.id, &subject).await? {
            RunRelease::Ours(release) if release.project == run.project => Ok(Some(release)),
            _ => Ok(None),
        }
    }

    /// Raises a separate queue's id sequences above every pipeline and job id the control plane
    /// holds (nothing to do when the queue shares the database); returns the floors.
    pub async fn raise_queue_ids(&self) -> Result<(i64, i64)> {
        let (pipeline, job) = self.read(async |conn| id_floors(conn).await).await?;
        if self.separate_queue() {
            self.backend.ensure_ids_above(pipeline, job).await?;
        }
        Ok((pipeline, job))
    }
}
