//! What the API answers: its own types, apart from the store's rows. Each view has the fields the
//! API shows (never a secret's hash, a token's scopes as stored, a spec's text or an audit diff) and
//! is made from its row with `From`. The names are the OpenAPI schemas' names.

use enclii_store as store;
use enclii_store::{
    DeploymentStatus, JobRunStatus, JobRunTrigger, ReleaseStatus, ReleaseTrigger, StepStatus, Strategy,
};
use serde::Serialize;
use utoipa::ToSchema;

/// `From<store::X> for X`, moving the fields the view shows (the rest of the row stays behind);
/// fields the row does not have follow the braces with their value (`waiting = None`).
macro_rules! from_row {
    ($view:ident { $($field:ident),+ $(,)? } $(, $extra:ident = $value:expr)*) => {
        impl From<store::$view> for $view {
            fn from(row: store::$view) -> Self {
                Self { $($field: row.$field,)+ $($extra: $value),* }
            }
        }
    };
}

/// Rows as their views.
pub fn all<R, V: From<R>>(rows: Vec<R>) -> Vec<V> {
    rows.into_iter().map(V::from).collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Project {
    pub slug: String,
    pub name: String,
    pub created_at: i64,
    pub created_by: String,
}

from_row!(Project {
    slug,
    name,
    created_at,
    created_by
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Environment {
    pub project: String,
    pub name: String,
    pub region: Option<String>,
    /// Monthly budget in cents; `None` means no budget.
    pub budget_cents: Option<i64>,
    pub created_at: i64,
    /// Quota: the most CPU (millicores), memory and volume storage (MiB) and replicas the
    /// environment's services may ask for together; `None` is unlimited.
    pub quota_cpu_millis: Option<i64>,
    pub quota_memory_mib: Option<i64>,
    pub quota_storage_mib: Option<i64>,
    pub quota_pods: Option<i64>,
    /// When the environment was paused (a budget at 100%, or by hand); `None` while it runs.
    /// A paused environment runs no cron or one-off jobs and takes no cost samples.
    pub paused_at: Option<i64>,
}

from_row!(Environment {
    project,
    name,
    region,
    budget_cents,
    created_at,
    quota_cpu_millis,
    quota_memory_mib,
    quota_storage_mib,
    quota_pods,
    paused_at
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Service {
    pub project: String,
    pub name: String,
    pub environment: String,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub spec_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

from_row!(Service {
    project,
    name,
    environment,
    repository,
    branch,
    spec_version,
    created_at,
    updated_at
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct SpecVersion {
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
}

from_row!(SpecVersion {
    version,
    created_at,
    created_by
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Release {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub git_sha: String,
    pub repository: String,
    pub branch: String,
    pub image: String,
    pub digest: Option<String>,
    pub sbom_uri: Option<String>,
    pub signature: Option<String>,
    pub status: ReleaseStatus,
    pub failure: Option<String>,
    pub pipeline_id: Option<i64>,
    /// What started the build.
    pub trigger: ReleaseTrigger,
    /// What built the image (provenance), e.g. `docker-buildkit 20.10.24`.
    pub builder: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Why a `building` release does not move: its run's next step waits for a worker and no
    /// alive worker can run that step's kind, e.g. `waiting: no worker can run clone (no Docker
    /// engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST)`. `null`
    /// when nothing stops it.
    pub waiting: Option<String>,
}

from_row!(
    Release {
        id,
        project,
        service,
        environment,
        git_sha,
        repository,
        branch,
        image,
        digest,
        sbom_uri,
        signature,
        status,
        failure,
        pipeline_id,
        trigger,
        builder,
        created_at,
        updated_at
    },
    waiting = None
);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Deployment {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    pub strategy: Strategy,
    pub status: DeploymentStatus,
    /// `deploy` or `rollback`.
    pub reason: String,
    pub job_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_by: String,
    /// Why it ended as it did, or which canary step it is on.
    pub detail: Option<String>,
    /// The canary's share of the traffic while the deployment is a canary.
    pub canary_percent: Option<i32>,
    /// Where the service answers (the first route), e.g. a preview's URL.
    pub url: Option<String>,
    pub finished_at: Option<i64>,
}

from_row!(Deployment {
    id,
    project,
    service,
    environment,
    release_id,
    strategy,
    status,
    reason,
    job_id,
    created_at,
    updated_at,
    created_by,
    detail,
    canary_percent,
    url,
    finished_at
});

/// A secret's metadata. Values are never part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct SecretMeta {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
}

from_row!(SecretMeta {
    project,
    environment,
    service,
    name,
    version,
    created_at,
    created_by
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Route {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub service: String,
    pub host: String,
    pub path: String,
    pub tls: bool,
    pub created_at: i64,
}

from_row!(Route {
    id,
    project,
    environment,
    service,
    host,
    path,
    tls,
    created_at
});

/// A DNS record a domain's owner creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct DomainRecord {
    /// `TXT`, `CNAME` or `A`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub value: String,
}

/// A custom domain: routed once `ownership` is found in DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Domain {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub service: String,
    pub host: String,
    pub path: String,
    pub status: enclii_store::DomainStatus,
    /// What the last check found, or why the domain failed.
    pub detail: Option<String>,
    pub checks: i64,
    pub checked_at: Option<i64>,
    pub verified_at: Option<i64>,
    /// Checks stop after this instant (epoch ms); re-check for a new one.
    pub deadline: i64,
    /// The route its verification created.
    pub route: Option<i64>,
    pub created_at: i64,
    /// Prove ownership: create this TXT record.
    pub ownership: DomainRecord,
    /// Send traffic: point the host at the router.
    pub target: DomainRecord,
    /// Its TLS certificate, once one was ordered (HTTPS on).
    pub certificate: Option<Certificate>,
}

/// A host's TLS certificate from the ACME server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Certificate {
    /// `ordering`, `issued` or `failed` (a failed renewal still serves the last certificate).
    pub status: enclii_store::CertificateStatus,
    /// When the certificate served expires (epoch ms); none before the first issue.
    pub not_after: Option<i64>,
    pub issued_at: Option<i64>,
    /// Why the last order failed: the ACME server's problem, or why it could not be reached.
    pub error: Option<String>,
    /// How many orders this host has had (renewals included).
    pub orders: i64,
}

from_row!(Certificate {
    status,
    not_after,
    issued_at,
    error,
    orders
});

impl Domain {
    pub fn new(
        row: store::Domain,
        ownership: DomainRecord,
        target: DomainRecord,
        certificate: Option<store::Certificate>,
    ) -> Self {
        Self {
            id: row.id,
            project: row.project,
            environment: row.environment,
            service: row.service,
            host: row.host,
            path: row.path,
            status: row.status,
            detail: row.detail,
            checks: row.checks,
            checked_at: row.checked_at,
            verified_at: row.verified_at,
            deadline: row.deadline,
            route: row.route_id,
            created_at: row.created_at,
            ownership,
            target,
            certificate: certificate.map(Certificate::from),
        }
    }
}

/// What a replica did on its own between deploys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReplicaEvent {
    pub id: i64,
    pub environment: String,
    pub release: i64,
    /// The container (or pod) name.
    pub replica: String,
    /// `exited` (restarted by the engine) or `liveness_failed` (restarted after its probe failed).
    pub kind: enclii_store::ReplicaEventKind,
    pub detail: String,
    pub created_at: i64,
}

from_row!(ReplicaEvent {
    id,
    environment,
    release,
    replica,
    kind,
    detail,
    created_at
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RoleBinding {
    pub subject: String,
    /// A project slug, or `*` for every project.
    pub project: String,
    pub role: String,
    pub created_at: i64,
}

from_row!(RoleBinding {
    subject,
    project,
    role,
    created_at
});

/// A personal access token as stored: the secret part only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct TokenRecord {
    pub id: String,
    pub subject: String,
    pub name: String,
    pub project: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

from_row!(TokenRecord {
    id,
    subject,
    name,
    project,
    created_at,
    expires_at,
    revoked_at
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Delivery {
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub project: Option<String>,
    /// What became of it: `pipelines`, `teardown`, `ignored: …`, `pong`.
    pub outcome: String,
    pub received_at: i64,
}

from_row!(Delivery {
    delivery_id,
    event,
    action,
    repository,
    project,
    outcome,
    received_at
});

/// The result of accepting a delivery.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WebhookOutcome {
    pub delivery_id: String,
    /// The delivery id was seen before: nothing was done this time.
    pub duplicate: bool,
    pub outcome: String,
    pub pipelines: Vec<i64>,
    pub releases: Vec<i64>,
}

from_row!(WebhookOutcome {
    delivery_id,
    duplicate,
    outcome,
    pipelines,
    releases
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity: String,
    pub project: Option<String>,
}

from_row!(AuditEvent {
    id,
    at,
    actor,
    action,
    entity_type,
    entity,
    project
});

/// One step of a release's pipeline (`clone`, `build`, `push`, `sbom`, `sign`): when it ran, how it
/// ended and where its log is archived — the release's step timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReleaseStep {
    pub release_id: i64,
    pub step: String,
    pub job_id: i64,
    pub attempt: i32,
    pub status: StepStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The failure (or a short result, such as the digest) of the step.
    pub detail: Option<String>,
    /// Where the step's whole log was archived when it ended (`s3://bucket/key`).
    pub log_uri: Option<String>,
}

from_row!(ReleaseStep {
    release_id,
    step,
    job_id,
    attempt,
    status,
    started_at,
    finished_at,
    detail,
    log_uri
});

/// One line of a job's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct LogLine {
    pub job_id: i64,
    /// 1-based, increasing across the job's attempts.
    pub seq: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub line: String,
}

from_row!(LogLine { job_id, seq, at, line });

/// A project's queue limits as operators set them, and whether its queue is paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueControl {
    pub project: String,
    /// Jobs of the project running at once; `null`: unlimited.
    pub max_running: Option<i64>,
    /// Jobs started per minute; `null`: unlimited.
    pub jobs_per_minute: Option<i64>,
    /// No job of the project starts while paused (running ones finish; enqueues are kept).
    pub paused: bool,
    pub updated_at: i64,
    pub updated_by: String,
}

from_row!(QueueControl {
    project,
    max_running,
    jobs_per_minute,
    paused,
    updated_at,
    updated_by
});

/// One run of a service's job: fired by cron or started by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobRunRecord {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub environment: String,
    /// The job's name in `spec.jobs`.
    pub job: String,
    pub trigger: JobRunTrigger,
    pub status: JobRunStatus,
    /// The queue's `job-run` job (its logs are the run's logs).
    pub queue_job_id: Option<i64>,
    /// Attempts started so far.
    pub attempts: i32,
    pub exit_code: Option<i64>,
    /// Why it ended as it did (or why it was skipped).
    pub detail: Option<String>,
    /// The fire time it stands for (cron), or when it was asked for (manual).
    pub scheduled_for: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `scheduler` for cron runs, the caller for manual ones.
    pub created_by: String,
}

from_row!(JobRunRecord {
    id,
    project,
    service,
    environment,
    job,
    trigger,
    status,
    queue_job_id,
    attempts,
    exit_code,
    detail,
    scheduled_for,
    created_at,
    started_at,
    finished_at,
    created_by
});

/// Usage and cost of one service in one environment over a report's period.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CostLine {
    pub environment: String,
    pub service: String,
    pub cpu_seconds: f64,
    pub ram_gib_hours: f64,
    pub volume_gib_hours: f64,
    pub egress_gib: f64,
    pub cost_cents: f64,
    /// Samples summed (one per 5 minutes of a running service by default).
    pub samples: i64,
}

from_row!(CostLine {
    environment,
    service,
    cpu_seconds,
    ram_gib_hours,
    volume_gib_hours,
    egress_gib,
    cost_cents,
    samples
});

/// A repository a project holds (it claimed it first) or was granted, and who may build from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RepositoryAccess {
    /// Normalised: `github.com/org/shop`.
    pub repository: String,
    /// The project that claimed it first; only it can grant access.
    pub owner: String,
    /// Projects the owner granted access (a grantee sees only itself).
    pub granted_to: Vec<String>,
}

from_row!(RepositoryAccess {
    repository,
    owner,
    granted_to
});

/// What a deletion started: the resource's rows are gone; these jobs remove what it ran on the
/// deploy target (`GET /v1/jobs/{id}` follows them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Deletion {
    /// Its queued or running jobs, cancelled first.
    pub cancelled_jobs: Vec<i64>,
    /// One `teardown` job per environment and service that ran on the target.
    pub teardown_jobs: Vec<i64>,
}

from_row!(Deletion {
    cancelled_jobs,
    teardown_jobs
});
