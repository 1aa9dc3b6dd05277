//! The Timetable and Waybill handlers that need a target: `job-run` (a cron or one-off run of
//! one of a service's jobs, with the image of the release deployed in its environment) and
//! `cost-sample` (the service's usage over the last interval, priced; a budget at 100% pauses a
//! non-prod environment's services).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use enclii_domain::jobs;
use enclii_store::{JobLog, JobRunStatus, NewCostSample, Prices};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use tracing::{info, warn};

use enclii_deploy_contract::model::{JobRunSpec, ServiceKey};

use crate::handlers::{Deployer, Failure};

/// The time a run may take is the kind's timeout less this, so the run is stopped (and its
/// container removed) before the queue gives up on the job.
const RUN_MARGIN: Duration = Duration::from_secs(15);
const GIB: f64 = (1u64 << 30) as f64;

/// Registers `job-run` and `cost-sample`.
pub fn register(registry: &mut Registry, deployer: Arc<Deployer>, prices: Prices) {
    registry
        .register_typed::<jobs::JobRun, _>(Timetable {
            deployer: deployer.clone(),
            prices,
        })
        .register_typed::<jobs::CostSample, _>(Timetable { deployer, prices });
}

struct Timetable {
    deployer: Arc<Deployer>,
    prices: Prices,
}

impl Timetable {
    async fn run(&self, job: jobs::JobRun, ctx: &JobContext) -> Result<(), Failure> {
        let store = self.deployer.store();
        // The run's row may commit just after its job (separate queue).
        let record = store
            .read_enqueued_with(ctx.job.created_at, || store.job_run(job.run))
            .await?;
        if record.status.is_final() {
            info!(run = record.id, status = %record.status, "job run already ended");
            return Ok(());
        }
        let attempt = ctx.job.attempt;
        store.job_run_started(record.id, attempt as i32).await?;
        let finish = |status: JobRunStatus, code: Option<i64>, detail: String| async move {
            if let Err(e) = store.job_run_finished(record.id, status, code, Some(&detail)).await {
                warn!(run = record.id, error = %e, "could not record how the job run ended");
            }
        };
        let spec = self.deployer.spec(&ctx.job.project, &job.service).await?;
        let Some(args) = spec
            .spec
            .jobs
            .iter()
            .find(|j| j.name == job.job)
            .map(|j| j.args.clone())
        else {
            let why = format!("the spec of {} has no job `{}` any more", job.service, job.job);
            finish(JobRunStatus::Failed, None, why.clone()).await;
            return Err(JobError::Abort(why).into());
        };
        let Some(deployment) = store
            .current_deployment(&ServiceKey::new(&ctx.job.project, &job.environment, &job.service))
            .await?
        else {
            let why = format!(
                "no release of {} runs in `{}`: deploy one before running its jobs",
                job.service, job.environment
            );
            finish(JobRunStatus::Failed, None, why.clone()).await;
            return Err(JobError::Abort(why).into());
        };
        let plan = store.deploy_plan(&deployment).await?;
        let release = &plan.release;
        let workload = self.deployer.workload(&deployment, &plan, spec).await?;
        let secrets: Vec<String> = workload
            .secrets
            .iter()
            .flat_map(|s| s.entries.iter().map(|(_, v)| v.expose().to_string()))
            .collect();
        let writer = JobLog::open(store.clone(), ctx.job.id, secrets).await?;
        let log = writer.log().clone();
        log.line(format!(
            "== job `{}` of {}/{} in {} · release {} · attempt {attempt}/{}",
            job.job, ctx.job.project, job.service, job.environment, release.id, ctx.job.policy.max_attempts
        ));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forward = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    log.line(line);
                }
            })
        };
        let run = JobRunSpec {
            job: job.job.clone(),
            args,
            run: record.id,
            attempt,
            timeout: ctx
                .job
                .policy
                .timeout
                .saturating_sub(RUN_MARGIN)
                .max(Duration::from_secs(1)),
        };
        let result = self.deployer.target().run_job(&workload, &run, tx).await;
        let _ = forward.await;
        let last = ctx.is_last_attempt();
        let outcome = match result {
            Ok(0) => {
                log.line("== exited with code 0");
                finish(JobRunStatus::Succeeded, Some(0), "exited with code 0".into()).await;
                Ok(())
            }
            Ok(code) => {
                let why = format!("job `{}` exited with code {code}", job.job);
                log.line(format!("== {why}{}", if last { "" } else { "; the queue retries it" }));
                if last {
                    finish(JobRunStatus::Failed, Some(code), why.clone()).await;
                }
                Err(JobError::Retry(why).into())
            }
            Err(e) => {
                let why = e.to_string();
                log.line(format!("== {why}"));
                if last || e.is_permanent() {
                    finish(JobRunStatus::Failed, None, why.clone()).await;
                }
                Err(if e.is_permanent() {
                    JobError::Abort(why).into()
                } else {
                    JobError::Retry(why).into()
                })
            }
        };
        writer.finish().await;
        outcome
    }

    async fn sample(&self, job: jobs::CostSample, ctx: &JobContext) -> Result<(), Failure> {
        let store = self.deployer.store();
        let key = ServiceKey::new(&ctx.job.project, &job.environment, &job.service);
        let usage = self
            .deployer
            .target()
            .usage(&key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        let now = chrono::Utc::now().timestamp_millis();
        let previous = store.last_cost_sample(&key).await?;
        // The interval since the last sample (the first sample counts one nominal interval).
        let interval_secs = previous
            .as_ref()
            .map(|p| ((now - p.sample.at) / 1000).clamp(1, 3600))
            .unwrap_or(300);
        let hours = interval_secs as f64 / 3600.0;
        let counter = usage.cpu_counter_ns.map(|n| n as i64);
        let cpu_seconds = match (counter, previous.as_ref().and_then(|p| p.sample.cpu_counter_ns)) {
            (Some(now_ns), Some(before)) if now_ns >= before => (now_ns - before) as f64 / 1e9,
            // A counter that went down belongs to restarted containers, and a first sample has
            // nothing to subtract: all the counter holds was used since they started.
            (Some(now_ns), _) => now_ns as f64 / 1e9,
            // No counter to difference: the gauge over the interval.
            _ => usage.cpu_millis / 1000.0 * interval_secs as f64,
        };
        // Bytes sent since the last sample (all of the counter for a first sample or restarted
        // containers, whose counter started again).
        let egress = usage.egress_counter_bytes.map(|n| n as i64);
        let egress_bytes = match (egress, previous.as_ref().and_then(|p| p.sample.egress_counter_bytes)) {
            (Some(now_bytes), Some(before)) if now_bytes >= before => now_bytes - before,
            (Some(now_bytes), _) => now_bytes,
            (None, _) => 0,
        };
        let sample = NewCostSample {
            project: key.project.clone(),
            environment: key.environment.clone(),
            service: key.service.clone(),
            at: now,
            interval_secs,
            cpu_seconds,
            ram_gib_hours: usage.memory_bytes as f64 / GIB * hours,
            volume_gib_hours: usage.volume_bytes as f64 / GIB * hours,
            egress_gib: egress_bytes as f64 / GIB,
            cost_cents: 0.0,
            cpu_counter_ns: counter,
            egress_counter_bytes: egress,
        }
        .priced(&self.prices);
        store.insert_cost_sample(&sample).await?;
        store.budget_check(&key.project, &key.environment, now).await?;
        let environment = store.environment(&key.project, &key.environment).await?;
        if environment.paused_at.is_some() {
            // Paused (by this sample's budget check or the scheduler's): stop every service
            // running there, since no more samples come for a paused environment.
            for service in store.list_services(&key.project).await? {
                let paused = ServiceKey::new(&key.project, &key.environment, &service.name);
                let running = store.current_deployment(&paused).await?;
                if running.is_some() {
                    info!(service = %paused, "environment paused by its budget: stopping the service");
                    self.deployer
                        .target()
                        .pause(&paused)
                        .await
                        .map_err(|e| JobError::Retry(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl TypedHandler<jobs::JobRun> for Timetable {
    async fn handle(&self, job: jobs::JobRun, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.run(job, ctx).await?)
    }
}

#[async_trait]
impl TypedHandler<jobs::CostSample> for Timetable {
    async fn handle(&self, job: jobs::CostSample, ctx: &JobContext) -> Result<(), JobError> {
        Ok(self.sample(job, ctx).await?)
    }
}
