//! Pipelines: a small DAG of jobs stored as one run. A step becomes `available` when every step it
//! `needs` has completed (fan-in); steps with the same needs run in parallel (fan-out). A step that
//! dies or is cancelled fails the run and cancels the steps that have not finished.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::QueueError;
use crate::job::{JobId, JobState, NewJob, PipelineId};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineStep {
    /// Unique within the pipeline (`clone`, `build`, …).
    pub name: String,
    pub job: NewJob,
    /// Names of the steps that must complete first.
    pub needs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewPipeline {
    pub project: String,
    /// What the run is for, e.g. `build-and-deploy`.
    pub name: String,
    /// Runs sharing this key supersede each other: enqueueing a new one cancels older unfinished
    /// ones (e.g. `service:api:branch:main`).
    pub supersede_key: Option<String>,
    /// Enqueueing a second pipeline with this key returns the first (e.g. a webhook delivery id).
    pub unique_key: Option<String>,
    pub steps: Vec<PipelineStep>,
}

/// A validated pipeline: steps in topological order with each step's dependents resolved.
#[derive(Clone, Debug)]
pub(crate) struct PlannedStep<'a> {
    pub step: &'a PipelineStep,
    pub dependents: Vec<String>,
}

impl NewPipeline {
    /// Checks names, dependencies and acyclicity; every step's job must belong to the pipeline's project.
    pub(crate) fn plan(&self) -> Result<Vec<PlannedStep<'_>>, QueueError> {
        let invalid = |msg: String| Err(QueueError::InvalidPipeline(msg));
        if self.steps.is_empty() {
            return invalid("a pipeline needs at least one step".into());
        }
        let mut names = BTreeSet::new();
        for step in &self.steps {
            if step.name.is_empty() {
                return invalid("a step has an empty name".into());
            }
            if !names.insert(step.name.as_str()) {
                return invalid(format!("step `{}` appears twice", step.name));
            }
            if step.job.project != self.project {
                return invalid(format!(
                    "step `{}` belongs to project `{}`, not the pipeline's `{}`",
                    step.name, step.job.project, self.project
                ));
            }
            step.job.validate()?;
        }
        for step in &self.steps {
            for need in &step.needs {
                if !names.contains(need.as_str()) {
                    return invalid(format!("step `{}` needs unknown step `{need}`", step.name));
                }
            }
        }
        // Kahn's algorithm: the order doubles as the cycle check.
        let mut remaining: BTreeMap<&str, usize> =
            self.steps.iter().map(|s| (s.name.as_str(), s.needs.len())).collect();
        let mut order = Vec::with_capacity(self.steps.len());
        while let Some(ready) = remaining.iter().find(|(_, n)| **n == 0).map(|(k, _)| *k) {
            remaining.remove(ready);
            let step = self.steps.iter().find(|s| s.name == ready).expect("known step");
            let dependents: Vec<String> = self
                .steps
                .iter()
                .filter(|s| s.needs.iter().any(|n| n == ready))
                .map(|s| s.name.clone())
                .collect();
            for dependent in &dependents {
                if let Some(n) = remaining.get_mut(dependent.as_str()) {
                    *n -= 1;
                }
            }
            order.push(PlannedStep { step, dependents });
        }
        if !remaining.is_empty() {
            let cycle: Vec<&str> = remaining.keys().copied().collect();
            return invalid(format!("steps {cycle:?} form a cycle"));
        }
        Ok(order)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Superseded,
}

impl PipelineState {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Running => "running",
            PipelineState::Succeeded => "succeeded",
            PipelineState::Failed => "failed",
            PipelineState::Cancelled => "cancelled",
            PipelineState::Superseded => "superseded",
        }
    }
}

impl std::str::FromStr for PipelineState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            PipelineState::Running,
            PipelineState::Succeeded,
            PipelineState::Failed,
            PipelineState::Cancelled,
            PipelineState::Superseded,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| QueueError::Corrupt(format!("unknown pipeline state {s:?}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineEnqueued {
    pub id: PipelineId,
    pub duplicate: bool,
    /// Older runs with the same supersede key that this one cancelled.
    pub superseded: Vec<PipelineId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub job: JobId,
    pub kind: String,
    pub state: JobState,
    pub attempt: u32,
    pub needs: Vec<String>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub id: PipelineId,
    pub project: String,
    pub name: String,
    pub state: PipelineState,
    pub supersede_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, needs: &[&str]) -> PipelineStep {
        PipelineStep {
            name: name.into(),
            job: NewJob::new(name, "p", serde_json::json!({})),
            needs: needs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pipeline(steps: Vec<PipelineStep>) -> NewPipeline {
        NewPipeline {
            project: "p".into(),
            name: "t".into(),
            supersede_key: None,
            unique_key: None,
            steps,
        }
    }

    #[test]
    fn plan_orders_topologically_with_fan_out_and_fan_in() {
        let p = pipeline(vec![
            step("deploy", &["sbom", "sign"]),
            step("sbom", &["push"]),
            step("sign", &["push"]),
            step("push", &[]),
        ]);
        let plan = p.plan().unwrap();
        let order: Vec<&str> = plan.iter().map(|s| s.step.name.as_str()).collect();
        assert_eq!(order[0], "push");
        assert_eq!(order[3], "deploy");
        assert_eq!(plan[0].dependents, vec!["sbom", "sign"]);
    }

    #[test]
    fn plan_rejects_cycles_unknown_needs_and_duplicates() {
        let cyclic = pipeline(vec![step("a", &["b"]), step("b", &["a"])]);
        assert!(cyclic.plan().unwrap_err().to_string().contains("cycle"));
        let unknown = pipeline(vec![step("a", &["zz"])]);
        assert!(unknown.plan().unwrap_err().to_string().contains("unknown step `zz`"));
        let dup = pipeline(vec![step("a", &[]), step("a", &[])]);
        assert!(dup.plan().unwrap_err().to_string().contains("twice"));
    }
}
