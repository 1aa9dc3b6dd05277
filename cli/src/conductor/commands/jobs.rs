//! `enclii jobs`: run a service's job now, list its runs.

use clap::Subcommand;
use serde_json::Value;

use crate::conductor::client::{Client, segment};
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::{Done, service_path};

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Run one of the service's jobs (spec.jobs) now; prints the run and its queue job.
    Run {
        /// The job's name in spec.jobs.
        name: String,
        /// The service whose spec has the job.
        #[arg(long)]
        service: String,
    },
    /// The service's job runs, newest first.
    List {
        /// The service.
        #[arg(long)]
        service: String,
        /// Only this job's runs.
        #[arg(long)]
        job: Option<String>,
    },
}

pub(super) async fn jobs(settings: &Settings, command: JobsCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    match command {
        JobsCommand::Run { name, service } => {
            let run = client
                .post(
                    &format!("{}/jobs/{}/runs", service_path(&project, &service), segment(&name)),
                    &Value::Null,
                )
                .await?;
            emit(settings.output, &run, |r| {
                outln!(
                    "run {} of {name} queued (job {})",
                    cell(&r["id"]),
                    cell(&r["queue_job_id"])
                )
            });
        }
        JobsCommand::List { service, job } => {
            let mut query = Vec::new();
            if let Some(job) = job {
                query.push(("job", job));
            }
            let runs = client
                .get_query(&format!("{}/jobs/runs", service_path(&project, &service)), &query)
                .await?;
            emit(settings.output, &runs, |r| {
                table(
                    r,
                    &["id", "job", "trigger", "status", "attempt", "exit"],
                    &["/id", "/job", "/trigger", "/status", "/attempt", "/exit_code"],
                )
            });
        }
    }
    Ok(())
}
