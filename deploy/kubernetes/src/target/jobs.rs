//! One-off job runs: a `Job`, its pod's log followed (secret values masked), its exit code.

use enclii_deploy_contract::{DeployError, JobRunSpec, Workload};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::LogParams;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::{JOB_TIMEOUT_EXIT_CODE, KubernetesTarget, Result, api_error};
use crate::manifests;

pub(super) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

impl KubernetesTarget {
    pub(super) async fn run_job_to_end(
        &self,
        workload: &Workload,
        run: &JobRunSpec,
        log: UnboundedSender<String>,
    ) -> Result<i64> {
        let ns = manifests::namespace_name(&workload.key);
        let name = manifests::job_run_name(&workload.key, &run.job, run.run, run.attempt);
        let deadline_seconds = i64::try_from(run.timeout.as_secs().max(1)).unwrap_or(i64::MAX);
        let job = manifests::job_run(workload, &run.job, run.args.clone(), name.clone(), deadline_seconds);
        self.apply_environment(workload).await?;
        self.apply(&job).await?;
        let masks: Vec<String> = workload
            .secrets
            .iter()
            .flat_map(|s| s.entries.iter().map(|(_, v)| v.expose().to_string()))
            .filter(|v| !v.is_empty())
            .collect();
        let deadline = Instant::now() + run.timeout;
        match tokio::time::timeout_at(deadline, self.follow_job(&ns, &name, &masks, &log)).await {
            Ok(code) => code,
            Err(_) => {
                self.delete::<Job>(&ns, &name).await?;
                let _ = log.send(format!(
                    "enclii: job {} timed out after {} s and was stopped",
                    run.job,
                    run.timeout.as_secs()
                ));
                Ok(JOB_TIMEOUT_EXIT_CODE)
            }
        }
    }

    /// Waits for the run's pod to start, sends its log lines (secret values masked), then
    /// returns its container's exit code.
    async fn follow_job(&self, ns: &str, name: &str, masks: &[String], log: &UnboundedSender<String>) -> Result<i64> {
        let pods = self.api::<Pod>(ns);
        let pod = self.started_pod(ns, name).await?;
        let lines = pods
            .log_stream(
                &pod,
                &LogParams {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| api_error(&format!("reading the log of Pod {ns}/{pod}"), e))?
            .lines();
        futures::pin_mut!(lines);
        while let Some(line) = lines
            .try_next()
            .await
            .map_err(|e| DeployError::kubernetes(format!("reading the log of Pod {ns}/{pod}: {e}"), e))?
        {
            let _ = log.send(mask(line, masks));
        }
        loop {
            if let Some(code) = self.get_opt::<Pod>(ns, &pod).await?.as_ref().and_then(exit_code) {
                return Ok(code);
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The name of the job's pod once it is past `Pending`.
    async fn started_pod(&self, ns: &str, job: &str) -> Result<String> {
        let selector = format!("{JOB_NAME_LABEL}={job}");
        loop {
            let pods = self.list::<Pod>(ns, &selector).await?;
            let started = pods.iter().find(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Running" | "Succeeded" | "Failed"))
            });
            if let Some(pod) = started {
                return Ok(pod.name_any());
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

fn exit_code(pod: &Pod) -> Option<i64> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
    Some(i64::from(terminated.exit_code))
}

pub(super) fn mask(mut line: String, masks: &[String]) -> String {
    for secret in masks {
        if line.contains(secret.as_str()) {
            line = line.replace(secret.as_str(), "***");
        }
    }
    line
}
