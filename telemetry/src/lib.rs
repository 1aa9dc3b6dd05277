//! Logging and tracing for `enclii server`.
//!
//! [`init`] installs the process's `tracing` subscriber: human-readable or JSON log lines on
//! stderr (filtered by `ENCLII_LOG`, default `info,sqlx=warn`) and — only when an OTLP endpoint is
//! configured — an OpenTelemetry layer that exports spans over OTLP/HTTP (protobuf) with
//! `service.name=enclii` and the process's roles as resource attributes. It also installs the
//! queue's span linker ([`enclii_queue::trace::set_span_linker`]), so the ids the API and the
//! workers carry in `traceparent` headers and `_trace` payloads are those of the exported spans:
//! one trace from a webhook through every job of its pipeline.
//!
//! JSON log lines carry the current span's fields and the list of spans (`span`, `spans`), so a
//! line logged inside a job shows its `trace_id`, `job_id`, `kind` and `project`.
//!
//! Keep the returned [`Telemetry`] alive; dropping it (or [`Telemetry::shutdown`]) flushes the
//! spans still buffered.

use std::fmt;
use std::time::Duration;

use enclii_queue::trace::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub mod otlp;

/// The standard variable naming an OTLP endpoint (a base URL; `/v1/traces` is appended).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable naming the traces endpoint itself (used as it is).
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// The standard switch that turns every OpenTelemetry export off (`true`).
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// How the process logs and traces.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// JSON lines instead of human-readable text (`--log-json`, `ENCLII_LOG_JSON`).
    pub json: bool,
    /// The OTLP/HTTP base URL (`--otlp-endpoint`, `ENCLII_OTLP_ENDPOINT`), e.g.
    /// `http://collector:4318`; spans go to `<url>/v1/traces`. Without it, the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` are read; with none of
    /// them, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The roles this process runs (`api,worker,scheduler`), the `enclii.role` resource attribute.
    pub role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter in ENCLII_LOG: {0}")]
    Filter(String),
    #[error("cannot set up the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Where spans are exported, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Export {
    Off,
    /// The full traces URL (`…/v1/traces`).
    Endpoint(Endpoint),
    /// The `OTEL_EXPORTER_OTLP_*` variables, resolved by the exporter.
    Standard(Endpoint),
}

/// An OTLP endpoint URL. It may carry credentials (`https://user:token@collector/…`, or a key in
/// its query string), so it is shown — `Display` and `Debug`, and so in log lines and errors —
/// with the user info and the query replaced by `***`; [`Endpoint::expose`] gives the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint(url.into())
    }

    /// The URL with its credentials: for the exporter only, never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The parts of the URL that must not be shown: the user info (and the password alone, in
    /// case a message shows the user name), the query and the fragment.
    fn secrets(&self) -> Vec<&str> {
        let (userinfo, tail) = split_url(&self.0);
        let mut secrets = Vec::new();
        if let Some(userinfo) = userinfo {
            secrets.push(userinfo);
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password);
            }
        }
        if let Some(tail) = tail {
            secrets.push(tail);
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so that a part inside another is not replaced before it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }

    /// `message` with every secret part of this URL replaced by `***` (error messages from the
    /// exporter quote the URL).
    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.to_string();
        for secret in self.secrets() {
            message = message.replace(secret, "***");
        }
        message
    }
}

/// The user info (before the last `@` of the authority) and what follows the path (`?…`/`#…`,
/// without its first character), if any.
fn split_url(url: &str) -> (Option<&str>, Option<&str>) {
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[rest_at..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo = rest[..authority_end].rfind('@').map(|at| &rest[..at]);
    let tail = rest[authority_end..]
        .find(['?', '#'])
        .map(|i| &rest[authority_end + i + 1..]);
    (userinfo, tail)
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scrub(&self.0))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Endpoint::new(url)
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Endpoint(url)
    }
}

impl Export {
    /// Decides from the configuration and the environment (`env` reads a variable).
    pub fn resolve(config: &Config, env: impl Fn(&str) -> Option<String>) -> Export {
        let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        if env(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Export::Off;
        }
        if let Some(base) = set(config.otlp_endpoint.clone()) {
            return Export::Endpoint(traces_url(&base).into());
        }
        if let Some(url) = set(env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)) {
            return Export::Standard(url.into());
        }
        match set(env(OTEL_EXPORTER_OTLP_ENDPOINT)) {
            Some(base) => Export::Standard(traces_url(&base).into()),
            None => Export::Off,
        }
    }
}

/// `<base>/v1/traces`, unless `base` already names it.
fn traces_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// How long [`Telemetry::shutdown`] waits for the last spans to be exported (the server's exit
/// after SIGTERM waits this much longer than its shutdown grace, at most).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed telemetry; flushes and stops the exporter when dropped.
#[must_use = "dropping it stops the span exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    export: Export,
}

impl Telemetry {
    /// Where spans go (for the start-up log line).
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Exports the spans still buffered and stops the exporter (also done on drop). Blocks for
    /// at most [`FLUSH_TIMEOUT`], however slow or silent the endpoint: the export thread is left
    /// behind then, and the spans it holds are lost.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            // The subscriber may be the only place to say it; stderr is the log's own stream. The
            // error may quote the endpoint: without its credentials.
            let e = match &self.export {
                Export::Endpoint(url) | Export::Standard(url) => url.scrub(&e.to_string()),
                Export::Off => e.to_string(),
            };
            eprintln!("enclii: flushing spans to the OTLP endpoint failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs logging (and, when configured, OTLP span export) for this process.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("ENCLII_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives).map_err(|e| TelemetryError::Filter(e.to_string()))?,
        Err(_) => EnvFilter::new("info,sqlx=warn"),
    };
    let logs = if config.json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let export = Export::resolve(config, |name| std::env::var(name).ok());
    let provider = match &export {
        Export::Off => None,
        Export::Endpoint(url) | Export::Standard(url) => {
            Some(provider(config, &export).map_err(|message| exporter_error(url, &message))?)
        }
    };
    let spans = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("enclii")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if provider.is_some() {
        enclii_queue::trace::set_span_linker(link);
    }
    Ok(Telemetry { provider, export })
}

/// The exporter could not be set up: the error names the endpoint without its credentials.
fn exporter_error(url: &Endpoint, message: &str) -> TelemetryError {
    TelemetryError::Exporter {
        endpoint: url.to_string(),
        message: url.scrub(message),
    }
}

fn provider(config: &Config, export: &Export) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Export::Endpoint(url) = export {
        exporter = exporter.with_endpoint(url.expose());
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name("enclii")
        .with_attributes([
            KeyValue::new("enclii.role", config.role.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The queue's [`enclii_queue::trace::SpanLinker`]: makes `parent` the exported span's remote
/// parent and returns the span's own ids as OpenTelemetry assigned them.
fn link(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(parent) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        span.set_parent(Context::new().with_remote_span_context(remote)).ok()?;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| TraceContext {
        trace_id: own.trace_id().to_bytes(),
        span_id: own.span_id().to_bytes(),
        flags: own.trace_flags().to_u8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(config_endpoint: Option<&str>, vars: &[(&str, &str)]) -> Export {
        let config = Config {
            otlp_endpoint: config_endpoint.map(String::from),
            ..Config::default()
        };
        Export::resolve(&config, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn endpoints_are_shown_without_credentials() {
        let url = Endpoint::from("https://user:s3cr3t@collector.example:4318/v1/traces?api_key=k3y#frag");
        assert_eq!(url.to_string(), "https://***@collector.example:4318/v1/traces?***");
        assert_eq!(
            format!("{:?}", Export::Endpoint(url.clone())),
            "Endpoint(Endpoint(https://***@collector.example:4318/v1/traces?***))"
        );
        assert_eq!(
            url.expose(),
            "https://user:s3cr3t@collector.example:4318/v1/traces?api_key=k3y#frag"
        );
        // Messages quoting the URL, as the exporter's do (the password alone too).
        let message = format!("invalid endpoint '{}': password s3cr3t", url.expose());
        let scrubbed = url.scrub(&message);
        assert!(!scrubbed.contains("s3cr3t") && !scrubbed.contains("k3y"), "{scrubbed}");
        // A token as the user name alone.
        let token = Endpoint::from("http://tok3n@c:4318");
        assert_eq!(token.to_string(), "http://***@c:4318");
        // No credentials: shown as it is (an `@` in the path is not user info).
        for plain in ["http://c:4318/v1/traces", "http://c:4318/a@b", "c:4318", ""] {
            assert_eq!(Endpoint::from(plain).to_string(), plain);
            assert_eq!(Endpoint::from(plain).scrub("error for x"), "error for x");
        }
        // Through resolve, the flag's URL keeps its credentials for the exporter only.
        let Export::Endpoint(url) = resolve(Some("http://u:p4ss@c:4318"), &[]) else {
            panic!("an endpoint")
        };
        assert_eq!(url.expose(), "http://u:p4ss@c:4318/v1/traces");
        assert_eq!(url.to_string(), "http://***@c:4318/v1/traces");
    }

    #[test]
    fn a_bad_endpoint_is_refused_without_showing_its_credentials() {
        let config = Config {
            otlp_endpoint: Some("http://u:p4ss@[not a host/v1/traces".into()),
            role: "all".into(),
            ..Config::default()
        };
        let export = Export::resolve(&config, |_| None);
        let Err(message) = provider(&config, &export) else {
            panic!("the exporter took an invalid URL")
        };
        assert!(message.contains("p4ss"), "the exporter quotes the URL: {message}");
        let Export::Endpoint(url) = &export else {
            panic!("an endpoint")
        };
        let error = exporter_error(url, &message).to_string();
        assert!(!error.contains("p4ss"), "{error}");
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_configured() {
        assert_eq!(resolve(None, &[]), Export::Off);
        assert_eq!(resolve(Some(" "), &[(OTEL_EXPORTER_OTLP_ENDPOINT, "")]), Export::Off);
        assert_eq!(
            resolve(
                Some("http://c:4318/"),
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://other:4318")]
            ),
            Export::Endpoint("http://c:4318/v1/traces".into()),
            "the flag wins and is a base URL, like the standard variable"
        );
        assert_eq!(
            resolve(Some("http://c:4318/v1/traces"), &[]),
            Export::Endpoint("http://c:4318/v1/traces".into())
        );
        assert_eq!(
            resolve(None, &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318")]),
            Export::Standard("http://c:4318/v1/traces".into())
        );
        assert_eq!(
            resolve(
                None,
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
                    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://t:4318/traces")
                ]
            ),
            Export::Standard("http://t:4318/traces".into())
        );
        assert_eq!(
            resolve(Some("http://c:4318"), &[(OTEL_SDK_DISABLED, "TRUE")]),
            Export::Off,
            "the standard switch turns it off"
        );
    }
}
