//! Control-plane records as stored and as the API returns them. Times are Unix epoch
//! milliseconds; spec documents are canonical JSON text.

use enclii_domain::spec::ServiceSpec;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

pub use crate::vocabulary::*;
pub use enclii_domain::ServiceKey;
pub use enclii_domain::github::WebhookIntent;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Project {
    pub slug: String,
    pub name: String,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EnvironmentChange {
    pub region: Option<String>,
    pub budget_cents: Option<i64>,
    #[serde(default)]
    pub quota_cpu_millis: Option<i64>,
    #[serde(default)]
    pub quota_memory_mib: Option<i64>,
    #[serde(default)]
    pub quota_storage_mib: Option<i64>,
    #[serde(default)]
    pub quota_pods: Option<i64>,
}

/// What the store needs of a validated Service Spec.
#[derive(Clone, Debug)]
pub struct ServiceDraft {
    pub project: String,
    pub name: String,
    /// The environment a push to `branch` deploys to.
    pub environment: String,
    /// [`enclii_domain::pipeline::repository_key`] of the spec's repository.
    pub repository: Option<String>,
    pub branch: Option<String>,
    /// The spec as canonical JSON.
    pub spec: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Service {
    pub project: String,
    pub name: String,
    pub environment: String,
    pub repository: Option<String>,
    pub branch: Option<String>,
    #[serde(skip)]
    pub spec: String,
    pub spec_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A stored spec document as JSON (`null` if the row holds something unreadable).
fn spec_document(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

impl Service {
    pub fn spec_json(&self) -> serde_json::Value {
        spec_document(&self.spec)
    }

    /// The spec as applied, typed (it was validated then).
    pub fn typed_spec(&self) -> Result<ServiceSpec, StoreError> {
        serde_json::from_str(&self.spec).map_err(|e| {
            StoreError::Corrupt(format!(
                "the stored spec of {}/{} does not parse: {e}; apply the service's spec again",
                self.project, self.name
            ))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SpecVersion {
    pub version: i64,
    #[serde(skip)]
    pub spec: String,
    pub created_at: i64,
    pub created_by: String,
}

impl SpecVersion {
    pub fn spec_json(&self) -> serde_json::Value {
        spec_document(&self.spec)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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
}

/// A build of one commit of a service, for one environment.
#[derive(Clone, Debug)]
pub struct BuildTrigger {
    pub project: String,
    pub service: String,
    pub git_sha: String,
    pub branch: String,
    /// Deploy here once the release is ready (`None`: build only).
    pub deploy_to: Option<String>,
    pub trigger: ReleaseTrigger,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

impl Deployment {
    /// The service, in its environment, that the deployment is of.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.project, &self.environment, &self.service)
    }
}

/// What deploying (or running a job of) one deployment's release reads, in one store call
/// ([`crate::Store::deploy_plan`]): the release, its environment (quota), the service's routes
/// there, the secret values it reads (narrowest scope wins) and which secrets are scoped to the
/// service. No `Debug`: it holds secret values.
#[derive(Clone)]
pub struct DeployPlan {
    pub release: Release,
    pub environment: Environment,
    pub routes: Vec<Route>,
    /// `(name, value)`, as [`crate::Store::service_secrets`] returns them.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// The service-scoped secrets (any environment), as [`crate::Store::list_secrets`] lists them.
    pub service_scoped: Vec<SecretMeta>,
    /// The environment's add-ons with their current credentials, for `fromAddon`/`envFrom: addon`.
    pub addons: Vec<crate::AddonAccess>,
}

/// A change of a deployment's progress.
#[derive(Clone, Debug, Default)]
pub struct DeploymentUpdate {
    pub status: DeploymentStatus,
    pub detail: Option<String>,
    pub canary_percent: Option<i32>,
    pub url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DeploymentRequest {
    pub project: String,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    pub strategy: Strategy,
    pub reason: String,
}

/// Where a secret applies: a whole project, one environment, or one service (in one environment
/// or in all of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretScope {
    pub project: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

impl SecretScope {
    pub(crate) fn environment_column(&self) -> &str {
        self.environment.as_deref().unwrap_or("")
    }
    pub(crate) fn service_column(&self) -> &str {
        self.service.as_deref().unwrap_or("")
    }
    /// The scope in words, for messages: "project `shop`, environment `prod`, service `api`".
    pub fn describe(&self) -> String {
        let mut place = format!("project `{}`", self.project);
        if let Some(environment) = &self.environment {
            place.push_str(&format!(", environment `{environment}`"));
        }
        if let Some(service) = &self.service {
            place.push_str(&format!(", service `{service}`"));
        }
        place
    }
    /// Authenticated data binding a sealed value to its place, so a row copied elsewhere fails to open.
    pub(crate) fn binding(&self, name: &str, version: i64) -> String {
        format!(
            "{}/{}/{}/{name}/{version}",
            self.project,
            self.environment_column(),
            self.service_column()
        )
    }
}

/// A secret's metadata. Values are never part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SecretMeta {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
}

/// A repository a project holds or was granted, and who else may build from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepositoryAccess {
    /// As `repository_key` normalises it (`github.com/org/shop`).
    pub repository: String,
    /// The project that claimed it first.
    pub owner: String,
    /// Projects the owner granted access (to a grantee: only itself).
    pub granted_to: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

#[derive(Clone, Debug, Deserialize)]
pub struct NewRoute {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub host: String,
    pub path: String,
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RoleBinding {
    pub subject: String,
    /// A project slug, or `*` for every project.
    pub project: String,
    pub role: String,
    pub created_at: i64,
}

/// A personal access token as stored: the secret part only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub subject: String,
    pub name: String,
    /// JSON list of permission scopes.
    #[serde(skip)]
    pub scopes: String,
    pub project: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    pub fn scope_list(&self) -> Vec<String> {
        serde_json::from_str(&self.scopes).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub project: Option<String>,
    /// What became of it: `pipelines`, `teardown`, `ignored: …`, `pong`.
    pub outcome: String,
    /// JSON list of pipeline ids enqueued for it.
    #[serde(skip)]
    pub pipeline_ids: String,
    pub received_at: i64,
}

impl Delivery {
    pub fn pipelines(&self) -> Vec<i64> {
        serde_json::from_str(&self.pipeline_ids).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub intent: WebhookIntent,
}

/// The result of accepting a delivery.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookOutcome {
    pub delivery_id: String,
    /// The delivery id was seen before: nothing was done this time.
    pub duplicate: bool,
    pub outcome: String,
    pub pipelines: Vec<i64>,
    pub releases: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity: String,
    pub project: Option<String>,
    #[serde(skip)]
    pub diff: String,
}

impl AuditEvent {
    /// The diff, without credentials an older version wrote into URLs there (the audit trail is
    /// append-only, so they are removed when shown: `enclii_domain::credentials`).
    pub fn diff_json(&self) -> serde_json::Value {
        let diff = enclii_domain::credentials::strip_url_credentials(&self.diff);
        serde_json::from_str(&diff).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub entity_type: Option<String>,
    /// Only events at or after this time (epoch ms).
    pub since: Option<i64>,
    /// Only events with a smaller id (paging backwards).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// What an audited change records. `diff` never holds secret values.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    pub action: &'a str,
    pub entity_type: &'a str,
    pub entity: String,
    pub project: Option<&'a str>,
    pub diff: serde_json::Value,
}

/// One step of a release's pipeline (`clone`, `build`, `push`, `sbom`, `sign`): when it ran, how it
/// ended and where its log is archived — the release's step timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

/// One line of a job's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LogLine {
    pub job_id: i64,
    /// 1-based, increasing across the job's attempts.
    pub seq: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub line: String,
}

/// A build artefact recorded on a release as its step finishes. The release becomes `ready` when
/// the last of digest, SBOM and signature arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Artefact {
    /// From `push`: the image digest (`sha256:…`), the pushed reference and the builder.
    Image {
        digest: String,
        image: String,
        builder: String,
    },
    /// From `sbom`: where the CycloneDX document is stored.
    Sbom { uri: String },
    /// From `sign`: the signature's reference in the registry.
    Signature { reference: String },
}

/// How a release's step ended: its status, detail and archived log, and the artefact it produced
/// with the run that produced it (recorded only while that run is the release's current one).
#[derive(Clone, Debug)]
pub struct StepEnd<'a> {
    pub step: &'a str,
    pub status: StepStatus,
    pub detail: Option<&'a str>,
    pub log_uri: Option<&'a str>,
    pub artefact: Option<(i64, &'a Artefact)>,
}

/// How a release's pipeline ended, as its build workers report it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReleaseOutcome {
    pub digest: Option<String>,
    pub sbom_uri: Option<String>,
    pub signature: Option<String>,
    /// `None` when the release is ready; otherwise the failing step and an actionable message.
    pub failure: Option<String>,
}
