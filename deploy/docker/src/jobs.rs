//! One-off job runs (cron and manual): a container per attempt with the release's image and
//! environment, its output forwarded line by line, stopped at the run's timeout and removed
//! however the run ends.

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{JobRunSpec, Workload};
use enclii_deploy_contract::target::JOB_TIMEOUT_EXIT_CODE;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::DockerTarget;

impl DockerTarget {
    pub(crate) async fn run_job_container(
        &self,
        workload: &Workload,
        run: &JobRunSpec,
        log: UnboundedSender<String>,
    ) -> Result<i64> {
        self.ensure_image(&workload.image).await?;
        let key = &workload.key;
        let name = format!(
            "enclii-{}-{}-{}-job-{}-run{}-a{}",
            key.project, key.environment, key.service, run.job, run.run, run.attempt
        );
        self.remove_container(&name).await?;
        let network = self.ensure_network(key).await?;
        let body = ContainerCreateBody {
            image: Some(workload.image.clone()),
            cmd: Some(run.args.clone()),
            env: Some(Self::environment(workload)),
            labels: Some(Self::labels(key, workload.release, "job")),
            host_config: Some(self.host_config(workload, false, &network)),
            networking_config: Some(Self::network_endpoint(&network, None)),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DeployError::docker(format!("creating job container {name}: {e}"), e))?;
        // Removed on every path out, including a timeout or the pool aborting the job.
        let _cleanup = ContainerGuard {
            docker: self.docker.clone(),
            name: name.clone(),
        };
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| DeployError::docker(format!("starting job container {name}: {e}"), e))?;
        let follow = async {
            let options = LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut logs = self.docker.logs(&name, Some(options));
            let mut partial = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let _ = log.send(line.trim_end().to_string());
                }
            }
            if !partial.is_empty() {
                let _ = log.send(partial);
            }
            let mut wait = self
                .docker
                .wait_container(&name, None::<bollard::query_parameters::WaitContainerOptions>);
            match wait.next().await {
                Some(Ok(status)) => Ok(status.status_code),
                // A non-zero exit arrives as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(DeployError::docker(format!("waiting for {name}: {e}"), e)),
                None => Err(DeployError::docker_message(format!("waiting for {name}: no status"))),
            }
        };
        match tokio::time::timeout(run.timeout, follow).await {
            Ok(code) => code,
            Err(_) => {
                let _ = log.send(format!(
                    "job `{}` did not finish within {} s and was stopped",
                    run.job,
                    run.timeout.as_secs()
                ));
                Ok(JOB_TIMEOUT_EXIT_CODE)
            }
        }
    }
}

/// Removes a job container when the run ends, however it ends.
struct ContainerGuard {
    docker: Docker,
    name: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&name, Some(options)).await;
            });
        }
    }
}
