//! Jobs: a spec job's suspended `CronJob` (the template Enclii's Timetable fires) and one-off
//! `Job` runs.

use std::collections::BTreeMap;

use enclii_deploy_contract::{Track, Workload};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::workload::{container, pod_spec};
use super::{LABEL_JOB, MAX_CRON_JOB_NAME, MAX_NAME, dns_name, labels, meta, namespace_name};

/// A spec job on its schedule (UTC), kept suspended: Enclii's Timetable fires the runs (one
/// history, one log stream, the queue's retries, no overlap), each as a Job from this template
/// (`run_job`), so the cluster holds the schedule and template without ever running them twice.
/// An operator can still start one by hand with `kubectl create job --from=cronjob/<name>`.
pub(super) fn cron_job(workload: &Workload, job: &enclii_domain::spec::Job) -> CronJob {
    let name = dns_name(&format!("{}-{}", workload.key.service, job.name), MAX_CRON_JOB_NAME);
    let mut labels = labels(workload, Track::Stable);
    labels.insert(LABEL_JOB.into(), dns_name(&job.name, MAX_NAME));
    CronJob {
        metadata: meta(name, &namespace_name(&workload.key), labels.clone()),
        spec: Some(CronJobSpec {
            schedule: job.schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            suspend: Some(true),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(job_spec(workload, job.args.clone(), labels, Some(3), None)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn job_spec(
    workload: &Workload,
    args: Vec<String>,
    labels: BTreeMap<String, String>,
    backoff_limit: Option<i32>,
    deadline_seconds: Option<i64>,
) -> JobSpec {
    let mut pod = pod_spec(workload, container(workload, Some(args), false), false);
    pod.restart_policy = Some("Never".into());
    JobSpec {
        backoff_limit,
        active_deadline_seconds: deadline_seconds,
        ttl_seconds_after_finished: Some(86_400),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

/// A one-off run of a spec job: no retries here (the queue retries), killed by the cluster at
/// `deadline_seconds` too.
pub fn job_run(workload: &Workload, job: &str, args: Vec<String>, name: String, deadline_seconds: i64) -> Job {
    let mut labels = labels(workload, Track::Stable);
    labels.insert(LABEL_JOB.into(), dns_name(job, MAX_NAME));
    Job {
        metadata: meta(name, &namespace_name(&workload.key), labels.clone()),
        spec: Some(job_spec(workload, args, labels, Some(0), Some(deadline_seconds))),
        ..Default::default()
    }
}
