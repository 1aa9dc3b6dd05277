//! The Service Spec as serde types. Field names are camelCase as written in the spec; unknown
//! fields are rejected everywhere so that a typo fails loudly. Serializing gives the canonical
//! form: every default filled in, unset optional fields left out.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::rules;

/// The only `apiVersion` this crate understands.
pub const API_VERSION: &str = "enclii.dev/v1";
/// The only `kind` this crate understands.
pub const KIND: &str = "Service";

/// A whole Service Spec document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

/// Which service this is: project and service names are slugs; the environment is `dev`,
/// `stage`, `prod` or `preview-<n>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub project: String,
    pub environment: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub build: Build,
    /// Where the code comes from. Without a source the service runs a prebuilt `runtime.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub env_from: Vec<EnvFrom>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub jobs: Vec<Job>,
    #[serde(default)]
    pub autoscaling: Autoscaling,
    #[serde(default)]
    pub deploy: Deploy,
    #[serde(default, skip_serializing_if = "Previews::is_default")]
    pub previews: Previews,
}

/// How the service's pull-request previews are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Previews {
    /// A preview's own add-ons start from the parent environment's latest completed backup of
    /// each (instead of empty).
    #[serde(default)]
    pub seed_addons: bool,
}

impl Previews {
    fn is_default(&self) -> bool {
        *self == Previews::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildType {
    /// Build with the given Dockerfile.
    #[default]
    Dockerfile,
    /// Detect the language and build without a Dockerfile.
    Auto,
}

/// How the image is built. Paths are relative to the repository root and may not leave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Build {
    #[serde(rename = "type", default)]
    pub build_type: BuildType,
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default = "default_context")]
    pub context: String,
    /// Build arguments (`ARG`), visible in the image's history: never put secrets here.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub args: std::collections::BTreeMap<String, String>,
    /// Lockbox secrets mounted for `RUN --mount=type=secret,id=NAME`; never stored in the image
    /// or printed in the build log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_context() -> String {
    ".".into()
}

impl Default for Build {
    fn default() -> Self {
        Build {
            build_type: BuildType::Dockerfile,
            dockerfile: default_dockerfile(),
            context: default_context(),
            args: Default::default(),
            secrets: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    pub git: GitSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSource {
    /// `https://`, `http://`, `ssh://`, `file://` or `git@host:path`.
    pub repository: String,
    /// The branch whose pushes deploy this service.
    pub branch: String,
}

/// What runs. `cpu` and `memory` are Kubernetes quantities kept as written (a YAML number such as
/// `cpu: 1` is accepted and kept as the string `"1"`); see [`Runtime::cpu_millis`] and
/// [`Runtime::memory_bytes`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// The image to run; may contain templates such as `{{ git.sha }}`. Without it, the image
    /// built from `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Overrides the image's command; when given it must not be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Vec<u32>,
    #[serde(default, deserialize_with = "opt_scalar", skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar", skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default)]
    pub replicas: Replicas,
}

impl Runtime {
    /// The CPU request in millicores; `None` when unset (or invalid, which validation rejects).
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu.as_deref().and_then(|c| rules::parse_cpu_millis(c).ok())
    }

    /// The memory request in bytes; `None` when unset (or invalid, which validation rejects).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory.as_deref().and_then(|m| rules::parse_memory_bytes(m).ok())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Replicas {
    pub min: u32,
    pub max: u32,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { min: 1, max: 1 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

/// A probe: exactly one of `httpGet` (a path, on `port` or else the first runtime port) and
/// `tcpSocket` (a port). Unset timings take the platform's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub host: String,
    #[serde(default = "default_route_path")]
    pub path: String,
    /// `tls: {redirect: false}` keeps plain HTTP answering once the host has a certificate
    /// (by default it redirects to HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
}

impl Route {
    /// Whether plain HTTP redirects to HTTPS once the host has a certificate.
    pub fn redirects_to_https(&self) -> bool {
        self.tls.as_ref().is_none_or(|tls| tls.redirect)
    }
}

/// A route's HTTPS behaviour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTls {
    #[serde(default = "yes")]
    pub redirect: bool,
}

fn yes() -> bool {
    true
}

fn default_route_path() -> String {
    "/".into()
}

/// An environment variable: a value (a YAML number or boolean is kept as its string), or one key
/// of an add-on's connection (`fromAddon: {name: db, key: url}`), resolved at deploy time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default, deserialize_with = "scalar")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_addon: Option<AddonKeyRef>,
}

/// One key of an add-on of the service's environment: `url`, `host`, `port`, `user`,
/// `password` and (PostgreSQL) `database`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddonKeyRef {
    pub name: String,
    pub key: String,
}

/// Import variables: every key of a secret (`secretRef`), or an add-on's standard connection
/// variables (`addon`: `DATABASE_URL`, `PGHOST`, … or `REDIS_URL`, `REDISHOST`, …). Exactly one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon: Option<String>,
}

impl EnvFrom {
    /// A secret import.
    pub fn secret(name: impl Into<String>) -> Self {
        Self {
            secret_ref: Some(name.into()),
            addon: None,
        }
    }
}

impl Spec {
    /// Every add-on the service reads, by name, once each.
    pub fn addons(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .env
            .iter()
            .filter_map(|e| e.from_addon.as_ref().map(|a| a.name.as_str()))
            .chain(self.env_from.iter().filter_map(|e| e.addon.as_deref()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub mount_path: String,
    /// A Kubernetes memory-style quantity, e.g. `10Gi`.
    #[serde(deserialize_with = "scalar")]
    pub size: String,
    /// The storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

impl Volume {
    /// The requested size in bytes; `None` if invalid (which validation rejects).
    pub fn size_bytes(&self) -> Option<u64> {
        rules::parse_memory_bytes(&self.size).ok()
    }
}

/// A cron job run with the service's image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    pub name: String,
    /// A 5-field cron schedule, e.g. `0 2 * * *`.
    pub schedule: String,
    pub args: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<Hpa>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hpa {
    /// Percent, 1–100.
    pub cpu_target_utilization: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployStrategy {
    #[default]
    Rolling,
    Canary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deploy {
    #[serde(default)]
    pub strategy: DeployStrategy,
    /// Canary traffic percentages, strictly increasing, ending at 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    #[serde(default)]
    pub analysis: Analysis,
}

fn default_steps() -> Vec<u32> {
    vec![10, 100]
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: DeployStrategy::Rolling,
            steps: default_steps(),
            analysis: Analysis::default(),
        }
    }
}

/// How a canary step is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Fraction of failed requests, 0–1.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// How long each step is observed, e.g. `2m`; see [`Analysis::window_duration`].
    #[serde(default = "default_window")]
    pub window: String,
    /// The slowest P95 latency a step may show, e.g. `800ms`; unchecked when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95_latency: Option<String>,
}

fn default_max_error_rate() -> f64 {
    0.02
}

fn default_window() -> String {
    "2m".into()
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            max_error_rate: default_max_error_rate(),
            window: default_window(),
            max_p95_latency: None,
        }
    }
}

impl Analysis {
    /// The observation window; `None` if invalid (which validation rejects).
    pub fn window_duration(&self) -> Option<Duration> {
        rules::parse_duration(&self.window).ok()
    }

    /// The P95 latency ceiling; `None` when unset (or invalid, which validation rejects).
    pub fn max_p95(&self) -> Option<Duration> {
        self.max_p95_latency
            .as_deref()
            .and_then(|d| rules::parse_duration(d).ok())
    }
}

/// A string field that also accepts a YAML/JSON number or boolean, kept as written
/// (`cpu: 1` → `"1"`, `value: 3000` → `"3000"`).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Scalar::deserialize(d).map(|s| s.0)
}

fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Scalar>::deserialize(d).map(|o| o.map(|s| s.0))
}
