//! The job kinds, each a serde payload with its own policy (priority, attempts, timeout, backoff).
//! Unknown fields are rejected so that a producer's typo fails loudly instead of being dropped.

use std::time::Duration;

use enclii_queue::{Backoff, JobKind, JobPolicy};
use serde::{Deserialize, Serialize};

const fn policy(priority: i16, max_attempts: u32, timeout_secs: u64, backoff_base_secs: u64) -> JobPolicy {
    JobPolicy {
        priority,
        max_attempts,
        timeout: Duration::from_secs(timeout_secs),
        backoff: Backoff::new(Duration::from_secs(backoff_base_secs), Duration::from_secs(600)),
    }
}

macro_rules! job_kind {
    ($ty:ident, $kind:literal, $policy:expr) => {
        impl JobKind for $ty {
            const KIND: &'static str = $kind;
            fn policy() -> JobPolicy {
                $policy
            }
        }
    };
}

/// Fetch the exact commit into a per-job workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clone {
    pub service: String,
    pub repository: String,
    pub commit: String,
    pub branch: Option<String>,
}
job_kind!(Clone, "clone", policy(2, 3, 300, 5));

/// Build the image from the cloned workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub service: String,
    pub commit: String,
    pub dockerfile: String,
    pub context: String,
}
// Three attempts: a broken Dockerfile fails at once (`StepError::fatal`), so the attempts are
// spent only by infrastructure (a worker killed, the engine restarting); two such faults in one
// build are not rare on a busy host (the chaos run hits that).
job_kind!(Build, "build", policy(3, 3, 1800, 10));

/// Push the built image to the registry; its digest goes on the Release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    pub service: String,
    pub commit: String,
    pub image: String,
}
job_kind!(Push, "push", policy(3, 3, 600, 5));

/// Inventory the image and lockfiles as CycloneDX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sbom {
    pub service: String,
    pub commit: String,
    pub image: String,
}
job_kind!(Sbom, "sbom", policy(4, 3, 600, 5));

/// Sign the image digest (cosign format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sign {
    pub service: String,
    pub commit: String,
    pub image: String,
}
job_kind!(Sign, "sign", policy(3, 3, 300, 5));

/// Roll a ready release out to an environment. A pipeline's deploy names the commit (its release
/// is found by service, environment and commit); an API deploy or rollback names the deployment
/// row it created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub service: String,
    pub environment: String,
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<i64>,
}
job_kind!(Deploy, "deploy", policy(1, 3, 900, 10));

/// Judge one canary step of a deployment by error rate and P95 latency over the spec's window;
/// advance to the next step, promote, or roll back. Enqueued by the deploy (and by each passing
/// step) to run when the step's window has passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryAnalyze {
    pub deployment: i64,
    /// Index into the spec's `deploy.steps` of the step being judged.
    pub step: u32,
}
job_kind!(CanaryAnalyze, "canary-analyze", policy(1, 5, 600, 5));

impl CanaryAnalyze {
    /// One analysis per deployment and step: `canary-analyze:<deployment>:<step>`. The deploy
    /// handler enqueues each step's analysis under it, and the reconciler enqueues a lost one
    /// again under the same key (so it never doubles a live one).
    pub fn unique_key(&self) -> String {
        format!("{}:{}:{}", Self::KIND, self.deployment, self.step)
    }
}

/// Run one of a service's jobs (`spec.jobs`) once, on schedule or on demand, with the image of
/// the release deployed in the environment. A failed run is retried by the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRun {
    pub service: String,
    pub environment: String,
    pub job: String,
    /// The `job_runs` row this execution reports to.
    pub run: i64,
}
job_kind!(JobRun, "job-run", policy(4, 3, 3600, 5));

/// Remove everything a pull request's preview environment created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewTeardown {
    pub service: String,
    pub repository: String,
    pub pull_request: u64,
    pub environment: String,
}
job_kind!(PreviewTeardown, "preview-teardown", policy(2, 5, 600, 10));

/// Remove what a deleted service (or every service of a deleted environment or project) has on
/// the deploy target: containers or Kubernetes objects, routes, and volumes unless kept. Its rows
/// are already gone; the job is idempotent, so a retry after a crash finishes the work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teardown {
    pub service: String,
    pub environment: String,
    /// The whole environment goes (an environment or project deleted), not only the service.
    #[serde(default)]
    pub whole_environment: bool,
    /// Leave the service's volumes and their data in place.
    #[serde(default)]
    pub keep_volumes: bool,
}
job_kind!(Teardown, "teardown", policy(2, 10, 600, 10));

/// Check a custom domain's ownership record (`_enclii-challenge.<host>`). `round` is the domain's
/// check round when the job was enqueued: a re-check starts a new round, and a job of an older
/// round does nothing. A record not found yet is not a failure: the handler schedules the next
/// check itself, with backoff, until the domain's deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainVerify {
    pub domain: i64,
    pub round: i64,
}
job_kind!(DomainVerify, "domain-verify", policy(4, 5, 60, 10));

/// Apply a service's routes in one environment to the deploy target now, without a deploy: a
/// route or a domain's route was added or removed. The handler reads the routes when it runs, so
/// the newest of several changes wins whatever order they ran in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSync {
    pub service: String,
    pub environment: String,
}
job_kind!(RouteSync, "route-sync", policy(1, 5, 60, 5));

/// Get (or renew) a TLS certificate for a host from the ACME server, answering its HTTP-01
/// challenge through the router. `order` is the host's order number when it was enqueued: a
/// job of an older order does nothing. An ACME server that is down is retried with backoff; the
/// host keeps serving its last certificate meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertOrder {
    pub host: String,
    pub order: i64,
}
job_kind!(CertOrder, "cert-order", policy(3, 6, 300, 30));

/// Start (or converge) an add-on on the deploy target at credentials generation `generation`: the
/// first generation creates it; a later one (a rotation) adds the new login beside the old and
/// rolls the services that use the add-on. A job of a generation no longer current does nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonProvision {
    pub addon: i64,
    pub generation: i64,
}
job_kind!(AddonProvision, "addon-provision", policy(3, 6, 600, 10));

/// Disable the login of generation `generation - 1` once the services rolled to `generation`
/// (enqueued by a rotation, after a grace period).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonRetire {
    pub addon: i64,
    pub generation: i64,
}
job_kind!(AddonRetire, "addon-retire", policy(3, 6, 120, 10));

/// Remove a deleted add-on's container (or Kubernetes objects), and its data unless kept. Its row
/// is already gone; idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonRemove {
    pub environment: String,
    pub name: String,
    #[serde(default)]
    pub keep_data: bool,
}
job_kind!(AddonRemove, "addon-remove", policy(2, 10, 300, 10));

/// Stream backup `backup` of an add-on (`pg_dump -Fc`, or an RDB snapshot of Redis) to the
/// artefact store, sealed with the backup's own data key. Its row says which add-on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonBackup {
    pub backup: i64,
}
job_kind!(AddonBackup, "addon-backup", policy(3, 4, 3600, 10));

/// Restore backup `backup` into the add-on with id `addon` (its own, or another of its kind),
/// after checking the stored artefact's SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonRestore {
    pub backup: i64,
    pub addon: i64,
}
job_kind!(AddonRestore, "addon-restore", policy(2, 3, 3600, 10));

/// Sample a service's resource usage for cost showback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostSample {
    pub service: String,
    pub environment: String,
}
job_kind!(CostSample, "cost-sample", policy(8, 2, 60, 5));

/// A diagnostic job that does nothing but succeed: enqueue one to check that workers are
/// claiming, running and acknowledging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    #[serde(default)]
    pub message: String,
}
job_kind!(Ping, "ping", policy(5, 1, 10, 1));

/// Every kind the platform knows, with its policy.
pub fn kinds() -> Vec<(&'static str, JobPolicy)> {
    vec![
        (Clone::KIND, Clone::policy()),
        (Build::KIND, Build::policy()),
        (Push::KIND, Push::policy()),
        (Sbom::KIND, Sbom::policy()),
        (Sign::KIND, Sign::policy()),
        (Deploy::KIND, Deploy::policy()),
        (CanaryAnalyze::KIND, CanaryAnalyze::policy()),
        (PreviewTeardown::KIND, PreviewTeardown::policy()),
        (Teardown::KIND, Teardown::policy()),
        (CostSample::KIND, CostSample::policy()),
        (DomainVerify::KIND, DomainVerify::policy()),
        (RouteSync::KIND, RouteSync::policy()),
        (CertOrder::KIND, CertOrder::policy()),
        (AddonProvision::KIND, AddonProvision::policy()),
        (AddonRetire::KIND, AddonRetire::policy()),
        (AddonRemove::KIND, AddonRemove::policy()),
        (AddonBackup::KIND, AddonBackup::policy()),
        (AddonRestore::KIND, AddonRestore::policy()),
        (JobRun::KIND, JobRun::policy()),
        (Ping::KIND, Ping::policy()),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum JobPayloadError {
    #[error("unknown job kind `{kind}`; known kinds: {known}")]
    UnknownKind { kind: String, known: String },
    #[error("invalid payload for a `{kind}` job: {message}")]
    Invalid { kind: String, message: String },
}

/// Checks that `payload` is a valid payload for `kind`; returns the kind's policy. The reserved
/// trace key (`_trace`, see `enclii_queue::trace`) is not part of any kind's type and is ignored.
pub fn validate(kind: &str, payload: &serde_json::Value) -> Result<JobPolicy, JobPayloadError> {
    check(kind, enclii_queue::trace::without_trace(payload).as_ref())
}

/// Decodes `payload` as `kind`'s type, as it is.
fn check(kind: &str, payload: &serde_json::Value) -> Result<JobPolicy, JobPayloadError> {
    fn decode<J: JobKind>(payload: &serde_json::Value) -> Result<JobPolicy, JobPayloadError> {
        J::deserialize(payload)
            .map(|_| J::policy())
            .map_err(|e| JobPayloadError::Invalid {
                kind: J::KIND.to_string(),
                message: e.to_string(),
            })
    }
    match kind {
        Clone::KIND => decode::<Clone>(payload),
        Build::KIND => decode::<Build>(payload),
        Push::KIND => decode::<Push>(payload),
        Sbom::KIND => decode::<Sbom>(payload),
        Sign::KIND => decode::<Sign>(payload),
        Deploy::KIND => decode::<Deploy>(payload),
        CanaryAnalyze::KIND => decode::<CanaryAnalyze>(payload),
        PreviewTeardown::KIND => decode::<PreviewTeardown>(payload),
        Teardown::KIND => decode::<Teardown>(payload),
        CostSample::KIND => decode::<CostSample>(payload),
        DomainVerify::KIND => decode::<DomainVerify>(payload),
        RouteSync::KIND => decode::<RouteSync>(payload),
        CertOrder::KIND => decode::<CertOrder>(payload),
        AddonProvision::KIND => decode::<AddonProvision>(payload),
        AddonRetire::KIND => decode::<AddonRetire>(payload),
        AddonRemove::KIND => decode::<AddonRemove>(payload),
        AddonBackup::KIND => decode::<AddonBackup>(payload),
        AddonRestore::KIND => decode::<AddonRestore>(payload),
        JobRun::KIND => decode::<JobRun>(payload),
        Ping::KIND => decode::<Ping>(payload),
        other => Err(JobPayloadError::UnknownKind {
            kind: other.to_string(),
            known: kinds().iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_has_a_distinct_name_and_sane_policy() {
        let all = kinds();
        let mut names: Vec<_> = all.iter().map(|(k, _)| *k).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for (kind, p) in all {
            assert!(p.max_attempts >= 1 && !p.timeout.is_zero(), "{kind}");
        }
        assert!(
            Deploy::policy().priority < CostSample::policy().priority,
            "deploys outrank cost samples"
        );
    }

    #[test]
    fn validation_names_unknown_kinds_and_bad_fields() {
        let err = validate("bulid", &json!({})).unwrap_err().to_string();
        assert!(
            err.contains("unknown job kind `bulid`") && err.contains("build"),
            "{err}"
        );
        let err = validate(
            "deploy",
            &json!({"service": "api", "environment": "prod", "commit": "abc", "extra": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = validate("deploy", &json!({"service": "api"})).unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
        assert!(validate("ping", &json!({})).is_ok());
    }

    #[test]
    fn no_kind_has_a_field_named_like_the_reserved_trace_key() {
        // Stripping `_trace` before decoding must never remove a field of a kind: every kind
        // refuses it as unknown (all are `deny_unknown_fields`, which names the field).
        for (kind, _) in kinds() {
            let err = check(
                kind,
                &json!({"_trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
            )
            .expect_err(kind)
            .to_string();
            assert!(err.contains("unknown field `_trace`"), "{kind}: {err}");
        }
    }

    #[test]
    fn the_reserved_trace_key_is_not_a_field() {
        let traced = json!({"service": "api", "environment": "prod", "commit": "abc",
                            "_trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
        assert!(validate("deploy", &traced).is_ok());
        assert!(validate("ping", &json!({"_trace": "not checked here"})).is_ok());
    }
}
