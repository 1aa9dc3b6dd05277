//! The runtime view of services and the CLI's previews: what a service's replicas print
//! (`GET …/services/{s}/logs`, JSON or live as Server-Sent Events), how a project's services run
//! now (`GET …/status`: release, replicas, health, P95 and error rate), and a build of any commit
//! into a preview environment (`POST …/services/{s}/previews`, what `enclii up` calls).
//!
//! Logs and status read the deploy target this process runs (`ApiConfig::runtime`); an API
//! process without one answers 503 `no_deploy_target`. Nothing here writes to the target.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::extract::{Body, Path, Query};
use crate::views::Release;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use enclii_deploy_contract::{LogRequest, RuntimeLogLine, ServiceKey, Target, Track};
use enclii_domain::spec::{validate_environment_name, validate_git_ref};
use enclii_store::{BuildTrigger, DeploymentStatus, EnvironmentChange, ReleaseTrigger, StoreError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::control::waiting::Lookup;
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// Lines of each replica a log read starts with, by default and at most.
const DEFAULT_TAIL: u32 = 100;
const MAX_TAIL: u32 = 10_000;
/// How long a log read (not followed) may take before it answers with what it has.
const READ_PATIENCE: Duration = Duration::from_secs(10);
/// The window `status` reports P95 latency and error rate over.
const METRICS_WINDOW: Duration = Duration::from_secs(300);

fn invalid(path: &str, message: impl Into<String>, hint: &str) -> ApiError {
    let message = message.into();
    ApiError::invalid(
        format!("{path}: {message}"),
        hint,
        vec![FieldError {
            path: path.to_string(),
            message,
        }],
    )
}

fn target(state: &AppState) -> Result<Arc<dyn Target>, ApiError> {
    state.runtime.clone().ok_or_else(|| ApiError::NotConfigured {
        code: "no_deploy_target",
        detail: "this API process has no deploy target, so it cannot see running services".into(),
        hint: "start the server with a deploy target (ENCLII_DEPLOY_TARGET=docker or kubernetes) in the same \
               process as the API (the default `enclii server` runs both)"
            .into(),
    })
}

// --- logs ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuntimeLogQuery {
    /// Defaults to the service's environment.
    environment: Option<String>,
    /// The last lines of each replica to start with (default 100, at most 10000).
    #[param(maximum = 10000)]
    tail: Option<u32>,
    /// Only lines matching this regular expression (a plain word matches as a substring).
    grep: Option<String>,
    /// Keep the response open as `text/event-stream` and send new lines as they are printed.
    #[serde(default)]
    follow: bool,
}

/// One line a replica printed.
#[derive(Serialize, ToSchema)]
pub struct RuntimeLogLineView {
    /// When the runtime received it (RFC 3339).
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// The container or pod that printed it.
    replica: String,
    /// `stdout`, `stderr` or `combined` (Kubernetes).
    stream: String,
    line: String,
}

impl From<RuntimeLogLine> for RuntimeLogLineView {
    fn from(l: RuntimeLogLine) -> Self {
        let stream = serde_json::to_value(l.stream)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        RuntimeLogLineView {
            timestamp: l.timestamp,
            replica: l.replica,
            stream,
            line: l.line,
        }
    }
}

/// The runtime log of a service's replicas: the last lines (oldest first), or with
/// `follow=true` a live stream of `line` events (each a JSON line) until the client leaves.
#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/logs", tag = "runtime",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name"),
           RuntimeLogQuery),
    responses((status = 200, body = [RuntimeLogLineView], description = "JSON, or `text/event-stream` of `line` events with follow=true"),
              (status = 422, body = crate::Problem), (status = 503, body = crate::Problem, description = "no deploy target")))]
pub async fn service_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Query(query): Query<RuntimeLogQuery>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Read, Some(&project))?;
    let tail = query.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_TAIL {
        return Err(invalid(
            "tail",
            format!("must be at most {MAX_TAIL} (got {tail})"),
            "ask for fewer lines",
        ));
    }
    let grep = match query.grep.as_deref().filter(|g| !g.is_empty()) {
        Some(pattern) => Some(regex::Regex::new(pattern).map_err(|e| {
            invalid(
                "grep",
                format!("not a valid regular expression: {e}"),
                "escape special characters (e.g. `\\(`), or send a plain word",
            )
        })?),
        None => None,
    };
    let current = state.store.service(&project, &service).await?;
    let environment = query.environment.unwrap_or(current.environment);
    let target = target(&state)?;
    let key = ServiceKey::new(project, environment, service);
    // With a filter, read further back so that `tail` matching lines can be found.
    let per_replica = if grep.is_some() {
        tail.saturating_mul(10).clamp(1000, MAX_TAIL * 10)
    } else {
        tail
    };
    let request = LogRequest {
        tail: per_replica,
        follow: query.follow,
    };
    let lines = target.logs(&key, request).await?;
    let matches = move |line: &RuntimeLogLine| grep.as_ref().is_none_or(|re| re.is_match(&line.line));
    if query.follow {
        let events = lines
            .take_while(|line| {
                if let Err(e) = line {
                    tracing::warn!(error = %e, "runtime log stream ended");
                }
                std::future::ready(line.is_ok())
            })
            .filter_map(move |line| std::future::ready(line.ok().filter(&matches)))
            .map(|line| {
                let view = RuntimeLogLineView::from(line);
                Ok::<_, Infallible>(
                    Event::default()
                        .event("line")
                        .json_data(&view)
                        .unwrap_or_else(|_| Event::default().event("line").data(view.line)),
                )
            });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut collected = Vec::new();
    let read = async {
        futures::pin_mut!(lines);
        while let Some(line) = lines.next().await {
            let line = line?;
            if matches(&line) {
                collected.push(line);
            }
        }
        Ok::<_, ApiError>(())
    };
    if let Ok(result) = tokio::time::timeout(READ_PATIENCE, read).await {
        result?;
    }
    // Replicas' lines interleaved by time; each replica's own order is kept for equal stamps.
    collected.sort_by_key(|l| l.timestamp);
    let skip = collected.len().saturating_sub(tail as usize);
    let views: Vec<RuntimeLogLineView> = collected.into_iter().skip(skip).map(Into::into).collect();
    Ok(Json(views).into_response())
}

// --- status -------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Report every service in this environment; default: each service's own environment.
    environment: Option<String>,
}

/// How one service runs now in one environment.
#[derive(Serialize, ToSchema)]
pub struct ServiceRuntime {
    service: String,
    environment: String,
    /// The release serving (the stable one); `null` when nothing runs.
    release: Option<i64>,
    git_sha: Option<String>,
    image: Option<String>,
    /// Healthy replicas of the serving releases.
    #[schema(value_type = i64, minimum = 0, maximum = 4_294_967_295_u32)]
    replicas_ready: u32,
    /// Replicas the spec asks for (`spec.runtime.replicas.min`).
    #[schema(value_type = i64, minimum = 0, maximum = 4_294_967_295_u32)]
    replicas_desired: u32,
    /// Restarts of the serving releases' replicas (after exiting or failing their liveness
    /// probe); a number that keeps growing is a crash loop. `null` where the target does not
    /// count them (Kubernetes).
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_u32)]
    restarts: Option<u32>,
    /// `healthy` (every replica ready), `degraded` (some), `down` (none), `paused` or
    /// `not_deployed`.
    health: String,
    /// Requests the serving release answered over the last 5 minutes.
    requests: u64,
    /// Its 95th percentile latency (ms) over the last 5 minutes; `null` without requests.
    p95_ms: Option<f64>,
    /// Its share of 5xx answers over the last 5 minutes (0–1).
    error_rate: f64,
    /// The canary release and its share of the traffic while one runs.
    canary_release: Option<i64>,
    #[schema(maximum = 100)]
    canary_percent: Option<u8>,
    /// Where it answers (its latest deployment's URL).
    url: Option<String>,
    /// The latest deployment's status, e.g. `succeeded`.
    deployment: Option<DeploymentStatus>,
}

/// Every service of a project as it runs now: release, replicas, health, P95 latency and error
/// rate over the last 5 minutes, canary share and URL.
#[utoipa::path(get, path = "/v1/projects/{project}/status", tag = "runtime",
    params(("project" = String, Path, description = "Project slug"), StatusQuery),
    responses((status = 200, body = [ServiceRuntime]), (status = 503, body = crate::Problem, description = "no deploy target")))]
pub async fn project_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<Vec<ServiceRuntime>>, ApiError> {
    principal.require(Permission::Read, Some(&project))?;
    if let Some(environment) = &query.environment {
        validate_environment_name(environment).map_err(|m| invalid("environment", m, "name an environment"))?;
    }
    let services = state.store.list_services(&project).await?;
    let target = target(&state)?;
    let mut report = Vec::with_capacity(services.len());
    for service in services {
        let environment = query.environment.clone().unwrap_or_else(|| service.environment.clone());
        let key = ServiceKey::new(&project, &environment, &service.name);
        let status = target.status(&key).await?;
        let stable = status.releases.iter().find(|r| r.track == Track::Stable);
        let canary = status.releases.iter().find(|r| r.track == Track::Canary);
        let ready: u32 = status.releases.iter().map(|r| r.healthy).sum();
        let running: u32 = status.releases.iter().map(|r| r.replicas).sum();
        let restarts = status
            .releases
            .iter()
            .map(|r| r.restarts)
            .try_fold(0u32, |sum, r| r.map(|r| sum.saturating_add(r)));
        let desired = service.typed_spec().map_or(1, |spec| spec.spec.runtime.replicas.min);
        let health = match stable {
            None => "not_deployed",
            Some(s) if s.percent == 0 && canary.is_none() => "paused",
            Some(_) if ready == 0 => "down",
            Some(_) if ready < running.max(desired) => "degraded",
            Some(_) => "healthy",
        };
        let metrics = match stable {
            Some(s) => target.release_metrics(&key, s.release, METRICS_WINDOW).await?,
            None => Default::default(),
        };
        let release = match stable {
            Some(s) => match state.store.release(s.release).await {
                Ok(r) => Some(r),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let latest = state
            .store
            .list_deployments(&project, Some(&service.name), 50)
            .await?
            .into_iter()
            .find(|d| d.environment == environment && d.status != DeploymentStatus::Superseded);
        report.push(ServiceRuntime {
            service: service.name,
            environment,
            release: stable.map(|s| s.release),
            git_sha: release.as_ref().map(|r| r.git_sha.clone()),
            image: release.map(|r| match r.digest {
                Some(digest) => format!("{}@{digest}", untagged(&r.image)),
                None => r.image,
            }),
            replicas_ready: ready,
            replicas_desired: desired,
            restarts,
            health: health.to_string(),
            requests: metrics.requests,
            p95_ms: metrics.p95.map(|d| d.as_secs_f64() * 1000.0),
            error_rate: metrics.error_rate(),
            canary_release: canary.map(|c| c.release),
            canary_percent: canary.map(|c| c.percent),
            url: latest.as_ref().and_then(|d| d.url.clone()),
            deployment: latest.map(|d| d.status),
        });
    }
    Ok(Json(report))
}

/// An image reference without its tag: `host:5000/p/s:abc` → `host:5000/p/s`.
fn untagged(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

// --- previews -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// The commit to build (40 or 64 hex characters).
    git_sha: String,
    /// The branch it is on (names the preview and supersedes older builds of the branch).
    branch: String,
    /// The preview's number (`preview-<n>`); default: one derived from the branch, so every
    /// `enclii up` of a branch lands in the same preview.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 18_446_744_073_709_551_615_u64)]
    number: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewStarted {
    /// `preview-<n>`.
    environment: String,
    release: Release,
    pipeline: i64,
    /// The commit already had a live release in the preview; nothing new was enqueued.
    duplicate: bool,
}

/// The preview number of a branch: stable, and above the numbers pull requests use.
fn branch_preview_number(branch: &str) -> u64 {
    // FNV-1a: stable across processes and versions (unlike the std hasher).
    let hash = branch.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1_000_000 + hash % 9_000_000
}

/// Builds a commit of the service and deploys it to a preview environment `preview-<n>`
/// (created when missing), served on `<service>-preview-<n>.<preview domain>` — what
/// `enclii up` runs. The same commit with a live release there is not rebuilt (`duplicate`).
#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/previews", tag = "releases",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name")),
    request_body = PreviewBody, responses((status = 202, body = PreviewStarted), (status = 422, body = crate::Problem)))]
pub async fn create_preview(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Body(req): Body<PreviewBody>,
) -> Result<(StatusCode, Json<PreviewStarted>), ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    let sha_ok = matches!(req.git_sha.len(), 40 | 64) && req.git_sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !sha_ok {
        return Err(invalid(
            "git_sha",
            "must be a full commit SHA (40 or 64 hex characters)",
            "send the output of `git rev-parse HEAD`",
        ));
    }
    validate_git_ref(&req.branch).map_err(|m| invalid("branch", m, "send the branch's name"))?;
    let environment = format!(
        "preview-{}",
        req.number.unwrap_or_else(|| branch_preview_number(&req.branch))
    );
    validate_environment_name(&environment).map_err(|m| invalid("number", m, "send a positive number"))?;
    state.store.service(&project, &service).await?;
    match state
        .store
        .create_environment(
            &principal.subject,
            &project,
            &environment,
            &EnvironmentChange::default(),
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let trigger = BuildTrigger {
        project,
        service,
        git_sha: req.git_sha.to_ascii_lowercase(),
        branch: req.branch,
        deploy_to: Some(environment.clone()),
        trigger: ReleaseTrigger::Api,
    };
    let (release, pipeline) = state.store.trigger_build(&principal.subject, &trigger).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PreviewStarted {
            environment,
            release: Lookup::new(&state).view(release).await,
            pipeline: pipeline.id,
            duplicate: pipeline.duplicate,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_off_but_registry_ports_stay() {
        assert_eq!(untagged("127.0.0.1:5000/shop/api:4f1c"), "127.0.0.1:5000/shop/api");
        assert_eq!(untagged("127.0.0.1:5000/shop/api"), "127.0.0.1:5000/shop/api");
        assert_eq!(untagged("shop/api"), "shop/api");
    }

    #[test]
    fn a_branch_always_gets_the_same_preview_above_pull_request_numbers() {
        let n = branch_preview_number("feature/login");
        assert_eq!(n, branch_preview_number("feature/login"));
        assert_ne!(n, branch_preview_number("main"));
        assert!((1_000_000..10_000_000).contains(&n));
        assert!(validate_environment_name(&format!("preview-{n}")).is_ok());
    }
}
