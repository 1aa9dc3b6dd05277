//! What acknowledged attempts mean for their pipelines, decided once for every backend: which
//! dependent steps lose a dependency, which runs may have succeeded, which runs failed.

use chrono::{DateTime, Utc};

use crate::backend::RescueReport;
use crate::job::{Ack, JobPolicy, JobState, Lease, Outcome, PipelineId};
use crate::pipeline::PipelineState;

/// The ack the reaper writes for a running job whose lease expired: its worker crashed, was
/// killed or was cut off, so the attempt failed — retried with backoff, or dead when attempts
/// are spent. Records the decision in `report`.
pub(crate) fn expired_lease_ack(
    lease: Lease,
    attempt: u32,
    pipeline: Option<PipelineId>,
    policy: &JobPolicy,
    worker: Option<&str>,
    now: DateTime<Utc>,
    report: &mut RescueReport,
) -> Ack {
    let error = format!(
        "lease expired: worker {} stopped heartbeating (crashed, killed or cut off)",
        worker.unwrap_or("?")
    );
    let outcome = Outcome::failure(attempt, policy, error, now);
    match outcome {
        Outcome::Dead { .. } => report.dead.push(lease.job),
        _ => report.retried.push(lease.job),
    }
    Ack {
        lease,
        pipeline,
        outcome,
    }
}

/// A job row as an acknowledgement left it.
#[derive(Clone, Debug)]
pub(crate) struct AckedRow {
    pub pipeline: Option<PipelineId>,
    pub state: JobState,
    pub step: Option<String>,
    pub dependents: Vec<String>,
}

/// A pipeline run that must stop because one of its steps did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoppedRun {
    pub pipeline: PipelineId,
    pub state: PipelineState,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    /// (pipeline, step) pairs that each lose one pending dependency; a pair may repeat (fan-in).
    pub released: Vec<(PipelineId, String)>,
    /// Runs with a newly completed step: succeeded if every step has now completed.
    pub maybe_succeeded: Vec<PipelineId>,
    pub stopped: Vec<StoppedRun>,
    /// Some job went back to waiting (a retry): workers should look again.
    pub wake: bool,
}

impl Progress {
    pub fn of(rows: &[AckedRow]) -> Self {
        let mut progress = Progress::default();
        for row in rows {
            let Some(pipeline) = row.pipeline else {
                progress.wake |= matches!(row.state, JobState::Scheduled | JobState::Available);
                continue;
            };
            let step = row.step.as_deref().unwrap_or_default();
            match row.state {
                JobState::Completed => {
                    progress.maybe_succeeded.push(pipeline);
                    for dependent in &row.dependents {
                        progress.released.push((pipeline, dependent.clone()));
                    }
                }
                JobState::Dead => progress.stopped.push(StoppedRun {
                    pipeline,
                    state: PipelineState::Failed,
                    reason: format!("pipeline failed at step `{step}`"),
                }),
                JobState::Cancelled => progress.stopped.push(StoppedRun {
                    pipeline,
                    state: PipelineState::Cancelled,
                    reason: format!("pipeline cancelled at step `{step}`"),
                }),
                _ => progress.wake = true,
            }
        }
        progress.maybe_succeeded.sort_unstable();
        progress.maybe_succeeded.dedup();
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_fan_in_failure_and_retry() {
        let rows = vec![
            AckedRow {
                pipeline: Some(1),
                state: JobState::Completed,
                step: Some("sbom".into()),
                dependents: vec!["deploy".into()],
            },
            AckedRow {
                pipeline: Some(1),
                state: JobState::Completed,
                step: Some("sign".into()),
                dependents: vec!["deploy".into()],
            },
            AckedRow {
                pipeline: Some(2),
                state: JobState::Dead,
                step: Some("build".into()),
                dependents: vec![],
            },
            AckedRow {
                pipeline: None,
                state: JobState::Scheduled,
                step: None,
                dependents: vec![],
            },
        ];
        let p = Progress::of(&rows);
        assert_eq!(p.released, vec![(1, "deploy".to_string()), (1, "deploy".to_string())]);
        assert_eq!(p.maybe_succeeded, vec![1]);
        assert_eq!(p.stopped[0].state, PipelineState::Failed);
        assert!(p.stopped[0].reason.contains("build"));
        assert!(p.wake);
    }
}
