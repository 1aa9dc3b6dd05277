//! The Service Spec: a service's source of truth, written as YAML or JSON.
//!
//! [`ServiceSpec::parse`] deserializes strictly (unknown fields are errors) and then validates
//! every semantic rule ([`ServiceSpec::validate`]). Every error names the field it is about with
//! the spec's own field names and list indexes, e.g. `spec.routes[1].host: …`. Syntax, type and
//! unknown-field errors stop at the first one (that is how the parsers work); semantic errors are
//! all reported together.
//!
//! ```
//! use enclii_domain::spec::{ServiceSpec, SpecFormat};
//!
//! let yaml = "apiVersion: enclii.dev/v1\nkind: Service\n\
//!             metadata: { project: shop, environment: prod, name: api }\n\
//!             spec: { runtime: { image: nginx, replicas: { min: 5, max: 2 } } }\n";
//! let err = ServiceSpec::parse(yaml, SpecFormat::Yaml).unwrap_err();
//! assert_eq!(err.to_string(), "spec.runtime.replicas.min: must be ≤ max (got 5 > 2)");
//! ```

mod budget;
mod rules;
mod text;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::DeserializeOwned;

pub use rules::{
    is_platform_host, parse_cpu_millis, parse_duration, parse_memory_bytes, validate_addon_key, validate_cron,
    validate_env_name, validate_environment_name, validate_git_ref, validate_git_url, validate_hostname, validate_slug,
};
pub use text::{MAX_GIT_REF, MAX_URL_PATH, validate_display_name, validate_url_path, validate_word};
pub use types::*;

/// The Service Spec example of the product brief, verbatim: a starting point for new services
/// (`enclii init`) and a fixture for tests.
pub const EXAMPLE: &str = r#"apiVersion: enclii.dev/v1
kind: Service
metadata: { project: solarpunk-saas, environment: prod, name: api }
spec:
  build:    { type: dockerfile, dockerfile: Dockerfile, context: . }   # or auto-detected
  source:   { git: { repository: https://github.com/org/repo, branch: main } }
  runtime:
    image: registry.example/org/api:{{ git.sha }}
    cmd: ["node", "server.js"]
    ports: [3000]
    cpu: 500m
    memory: 512Mi
    replicas: { min: 2, max: 5 }
  health:   { readiness: { httpGet: /healthz, timeoutSeconds: 2 } }
  routes:   [ { host: api.example.dev, path: / } ]
  env:      [ { name: NODE_ENV, value: production } ]
  envFrom:  [ { secretRef: api-prod } ]
  volumes:  [ { name: uploads, mountPath: /data, size: 10Gi, class: standard } ]
  jobs:     [ { name: nightly-report, schedule: "0 2 * * *", args: ["node", "scripts/nightly.js"] } ]
  autoscaling: { hpa: { cpuTargetUtilization: 70 } }
  deploy:   { strategy: canary, steps: [10, 100], analysis: { maxErrorRate: 0.02, window: 2m } }
"#;

/// The path used for errors about the document as a whole.
pub const ROOT_PATH: &str = "(root)";

/// How a spec is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
}

/// One problem with a spec: the field it is about and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// The field, as written in the spec: `spec.runtime.replicas.min`, `spec.env[0].name`, or
    /// [`ROOT_PATH`] for the document itself.
    pub path: String,
    pub message: String,
}

/// Every problem found with a spec (never empty when returned as an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecErrors(vec![SpecError {
            path: path.into(),
            message: message.into(),
        }])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, SpecError> {
        self.0.iter()
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl<'a> IntoIterator for &'a SpecErrors {
    type Item = &'a SpecError;
    type IntoIter = std::slice::Iter<'a, SpecError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl ServiceSpec {
    /// Parses and validates a spec written in `format`.
    pub fn parse(text: &str, format: SpecFormat) -> Result<ServiceSpec, SpecErrors> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let blank = |line: &str| {
            let line = line.trim();
            let yaml_noise = line.starts_with('#') || line == "---" || line == "...";
            line.is_empty() || (format == SpecFormat::Yaml && yaml_noise)
        };
        if text.lines().all(blank) {
            return Err(SpecErrors::one(ROOT_PATH, "the spec is empty"));
        }
        let spec: ServiceSpec = match format {
            SpecFormat::Yaml => from_yaml(text),
            SpecFormat::Json => from_json(text.as_bytes()),
        }
        .map_err(|(path, message)| SpecErrors::one(path, message))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Like [`ServiceSpec::parse`], guessing the format: JSON if the first non-blank character
    /// is `{`, YAML otherwise.
    pub fn parse_any(text: &str) -> Result<ServiceSpec, SpecErrors> {
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let format = if body.trim_start().starts_with('{') {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        };
        Self::parse(text, format)
    }
}

/// Deserializes one YAML document, locating any error as `(path, message)`. What the document
/// may expand to through aliases is bounded ([`budget`]).
fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    let budget = budget::Budget::default();
    let de = budget::Bounded::new(serde_yaml::Deserializer::from_str(text), &budget);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // serde_yaml starts its messages with its own idea of the path (some ancestor of the
        // field serde_path_to_error tracked); drop it, the error carries the precise path.
        let message = e.inner().to_string();
        let prefixes = path_prefixes(e.path());
        let message = prefixes
            .iter()
            .rev()
            .find_map(|p| message.strip_prefix(p.as_str()).and_then(|m| m.strip_prefix(": ")))
            .map(str::to_string)
            .unwrap_or(message);
        // serde_yaml leaves out a position of line 1 column 1; say it anyway.
        let message = match e.inner().location() {
            Some(at) if !message.contains(" at line ") && !message.contains(" at position ") => {
                format!("{message} at line {} column {}", at.line(), at.column())
            }
            _ => message,
        };
        locate(e.path(), message)
    })
}

/// Deserializes one JSON value (nothing but whitespace may follow), locating any error as
/// `(path, message)`.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, (String, String)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| locate(e.path(), e.inner().to_string()))?;
    de.end().map_err(|e| (ROOT_PATH.to_string(), e.to_string()))?;
    Ok(value)
}

/// Renders every prefix of `path` (`spec`, `spec.env`, `spec.env[0]`, …), shortest first.
fn path_prefixes(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut prefixes = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut out, key),
            Segment::Enum { variant } => push_key(&mut out, variant),
            Segment::Unknown => push_key(&mut out, "?"),
        }
        prefixes.push(out.clone());
    }
    prefixes
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

/// Turns a serde path and message into the `(path, message)` of an error. A missing or
/// duplicate field is reported at the field's own path rather than its parent's.
pub(crate) fn locate(path: &serde_path_to_error::Path, message: String) -> (String, String) {
    // A syntax error inside a map leaves an unknown key at the end of the path: drop it.
    let prefixes = path_prefixes(path);
    let known = path
        .iter()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|s| !matches!(s, serde_path_to_error::Segment::Unknown));
    let mut out = known.and_then(|i| prefixes.get(i)).cloned().unwrap_or_default();
    let field = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    if let Some(field) = field {
        push_key(&mut out, field);
    }
    if out.is_empty() {
        out.push_str(ROOT_PATH);
    }
    (out, message)
}
