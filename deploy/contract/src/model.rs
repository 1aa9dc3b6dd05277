//! What the targets are given and what they report: plain data, no I/O.

use std::fmt;
use std::time::Duration;

use enclii_domain::spec::Spec;
use serde::{Deserialize, Serialize};

pub use enclii_domain::ServiceKey;

/// A value from the secrets store: never printed (`Debug` shows `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value. Named so that every use is visible in review.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret the workload reads as environment variables: on Kubernetes a `Secret` object named
/// `name` referenced with `envFrom`; on Docker its entries become container environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEnv {
    /// The object name (a DNS label), e.g. `api-prod` from `envFrom: [{secretRef: api-prod}]`, or
    /// `<service>-env` for the secrets stored in the service's scope.
    pub name: String,
    pub entries: Vec<(String, SecretValue)>,
}

/// A host (and path prefix) that routes to the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteBinding {
    pub host: String,
    pub path: String,
    /// Serve over TLS (Kubernetes: an Ingress TLS section with a cert-manager certificate).
    pub tls: bool,
}

/// The environment's limits: a workload that would exceed them is refused before anything is
/// applied. `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
    pub pods: Option<u32>,
}

/// Everything a target needs to run one release of a service.
#[derive(Clone, Debug)]
pub struct Workload {
    pub key: ServiceKey,
    pub release: i64,
    /// The deployment applying it. Deployment ids grow with creation: a target that remembers
    /// the id it applied last refuses an older deployment ([`DeployError::Superseded`]).
    ///
    /// [`DeployError::Superseded`]: crate::error::DeployError::Superseded
    pub deployment: i64,
    /// The image pinned by digest (`registry/project/service@sha256:…`).
    pub image: String,
    /// The git commit the release was built from (a label, for people and cost reports).
    pub git_sha: String,
    /// The service spec the release is deployed with (runtime, health, routes, jobs, …).
    pub spec: Spec,
    /// Secrets read as environment variables (see [`SecretEnv`]).
    pub secrets: Vec<SecretEnv>,
    /// Every route bound to the service in this environment (the spec's routes, routes added
    /// through the API, a preview's host).
    pub routes: Vec<RouteBinding>,
    pub quota: Quota,
}

/// How a release takes over from the one running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rollout {
    /// Start the release, wait until it is healthy, move all traffic to it, remove the others.
    Replace,
    /// Start the release beside the stable one and give it `percent` of the traffic.
    Canary { percent: u8 },
}

/// What a deploy left running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOutcome {
    /// Replicas started and healthy.
    pub replicas: u32,
    /// Where the first route serves, e.g. `http://api.pr-7.preview.localhost:8080/`.
    pub url: Option<String>,
    /// `canary` when the release runs beside a stable one; `stable` when it serves alone.
    pub track: Track,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Stable,
    Canary,
}

/// Requests served by one release over a window, as a canary analysis reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMetrics {
    pub requests: u64,
    /// Responses with a 5xx status, and requests the release could not answer at all.
    pub errors: u64,
    /// The 95th percentile latency; `None` without requests.
    pub p95: Option<Duration>,
}

impl ReleaseMetrics {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What runs now for one service: per release, its track, traffic share and replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub releases: Vec<ReleaseStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub release: i64,
    pub track: Track,
    /// Share of the traffic, 0–100.
    pub percent: u8,
    pub replicas: u32,
    pub healthy: u32,
    /// How often its replicas were restarted (after exiting or failing their liveness probe);
    /// `None` where the target does not count them (Kubernetes: see the pods).
    #[serde(default)]
    pub restarts: Option<u32>,
}

/// What happened to a running replica on its own, between deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaEventKind {
    /// Its process exited; the engine started it again (restart policy).
    Exited,
    /// It failed its liveness probe `failureThreshold` times in a row; it was restarted.
    LivenessFailed,
}

/// One replica's event, for the service's history (see [`crate::target::ReplicaEvents`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEvent {
    pub key: ServiceKey,
    pub release: i64,
    /// The replica (container or pod) name.
    pub replica: String,
    pub kind: ReplicaEventKind,
    /// What was seen: the exit code, the probe's failure.
    pub detail: String,
}

/// A one-off run of one of the service's jobs (`spec.jobs`), with the workload's image and
/// environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRunSpec {
    pub job: String,
    pub args: Vec<String>,
    /// The `job_runs` id and the attempt: together they name the run's container or pod.
    pub run: i64,
    pub attempt: u32,
    pub timeout: Duration,
}

/// Resource usage of one service at one instant, as a cost sample reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used so far by the running replicas (a counter), where the target has one.
    pub cpu_counter_ns: Option<u64>,
    /// CPU in use now, in millicores (a gauge): used when there is no counter.
    pub cpu_millis: f64,
    pub memory_bytes: u64,
    /// Volume capacity provisioned for the service.
    pub volume_bytes: u64,
    /// Bytes sent out so far (a counter), where the target has one.
    pub egress_counter_bytes: Option<u64>,
    pub replicas: u32,
}

impl Workload {
    /// Checks the workload's demand against the environment's quota before anything is applied;
    /// the error names the spec field, both numbers and what to change.
    ///
    /// The demand is the workload at its largest: `replicas.max` replicas, all volumes. A rolling
    /// update briefly runs one replica more, so a quota met exactly can stall a rollout.
    pub fn check_quota(&self) -> crate::error::Result<()> {
        let workload = self;
        let runtime = &workload.spec.runtime;
        let quota = &workload.quota;
        let max = u64::from(runtime.replicas.max);
        let mut problems = Vec::new();
        if let Some(limit) = quota.cpu_millis {
            match runtime.cpu_millis() {
                None => problems.push(format!(
                    "spec.runtime.cpu is not set but the environment has a CPU quota of {limit}m; set spec.runtime.cpu"
                )),
                Some(cpu) if cpu * max > limit => problems.push(format!(
                    "spec.runtime.cpu × replicas.max = {}m exceeds the environment's quota of {limit}m; \
                     lower spec.runtime.replicas.max or spec.runtime.cpu, or raise the quota",
                    cpu * max
                )),
                Some(_) => {}
            }
        }
        if let Some(limit) = quota.memory_bytes {
            match runtime.memory_bytes() {
                None => problems.push(format!(
                    "spec.runtime.memory is not set but the environment has a memory quota of {}; set spec.runtime.memory",
                    format_bytes(limit)
                )),
                Some(memory) if memory * max > limit => problems.push(format!(
                    "spec.runtime.memory × replicas.max = {} exceeds the environment's quota of {}; \
                     lower spec.runtime.replicas.max or spec.runtime.memory, or raise the quota",
                    format_bytes(memory * max),
                    format_bytes(limit)
                )),
                Some(_) => {}
            }
        }
        if let Some(limit) = quota.storage_bytes {
            let total: u64 = workload.spec.volumes.iter().filter_map(|v| v.size_bytes()).sum();
            if total > limit {
                problems.push(format!(
                    "spec.volumes[*].size add up to {} which exceeds the environment's storage quota of {}; \
                     shrink or remove a volume, or raise the quota",
                    format_bytes(total),
                    format_bytes(limit)
                ));
            }
        }
        if let Some(limit) = quota.pods
            && runtime.replicas.max > limit
        {
            problems.push(format!(
                "spec.runtime.replicas.max = {} exceeds the environment's quota of {limit} pods; \
                 lower spec.runtime.replicas.max or raise the quota",
                runtime.replicas.max
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(crate::DeployError::Refused(problems.join("; ")))
        }
    }
}

/// Bytes as a quantity: `4Gi`, `512Mi`, `10Ki` when exact, else plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, unit) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Which output of a replica a runtime log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Both, merged by the runtime (Kubernetes does not tell them apart).
    Combined,
}

/// One line a replica of a service printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeLogLine {
    /// When the runtime received the line, when it says.
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// The replica (container or pod) that printed it.
    pub replica: String,
    pub stream: LogStream,
    pub line: String,
}

impl RuntimeLogLine {
    /// Splits a runtime's `<RFC 3339 timestamp> <text>` line (Docker's and Kubernetes'
    /// `timestamps` option); a line without one keeps its text whole.
    pub fn parse(replica: &str, stream: LogStream, raw: &str) -> Self {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (timestamp, line) = match raw.split_once(' ') {
            Some((first, rest)) => match chrono::DateTime::parse_from_rfc3339(first) {
                Ok(at) => (Some(at.with_timezone(&chrono::Utc)), rest),
                Err(_) => (None, raw),
            },
            None => (None, raw),
        };
        RuntimeLogLine {
            timestamp,
            replica: replica.to_string(),
            stream,
            line: line.to_string(),
        }
    }
}

/// Which runtime log lines to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRequest {
    /// The last lines of each replica to start with.
    pub tail: u32,
    /// Keep the stream open and send new lines as the replicas print them.
    pub follow: bool,
}

/// The lines of every replica of a service, merged as they arrive (each replica's in order).
pub type LogLines = futures::stream::BoxStream<'static, crate::error::Result<RuntimeLogLine>>;

/// An add-on: `name` in one project environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddonKey {
    pub project: String,
    pub environment: String,
    pub name: String,
}

impl std::fmt::Display for AddonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "add-on {}/{}/{}", self.project, self.environment, self.name)
    }
}

/// An add-on to run: its image and the login it must accept. Never logged whole (`Debug` of
/// the credentials hides the passwords).
#[derive(Clone, Debug)]
pub struct AddonWorkload {
    pub key: AddonKey,
    pub kind: enclii_domain::addons::AddonKind,
    pub image: String,
    /// The data volume's size, where the target enforces one (Kubernetes: the PVC's request).
    pub size_bytes: Option<u64>,
    pub credentials: enclii_domain::addons::AddonCredentials,
    /// The login before the last rotation, valid until retired.
    pub previous: Option<enclii_domain::addons::AddonCredentials>,
}
