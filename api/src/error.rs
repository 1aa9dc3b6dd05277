//! API errors as `application/problem+json` (RFC 9457) with a stable `code`, a safe message and a
//! hint. Internal details are logged, never returned.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use enclii_deploy_contract::DeployError;
use enclii_queue::QueueError;
use enclii_store::StoreError;
use serde::Serialize;

/// The media type of every error answer.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// One field that failed validation, e.g. `spec.runtime.replicas.min: must be ≤ max (got 5 > 2)`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Every field that failed validation (validation errors only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        code: &'static str,
        detail: String,
        hint: Option<String>,
    },
    /// The request is well-formed but names invalid values; every failing field is listed.
    #[error("{detail}")]
    Invalid {
        detail: String,
        hint: String,
        errors: Vec<FieldError>,
    },
    #[error("{detail}")]
    Unauthorized {
        code: &'static str,
        detail: String,
        hint: String,
    },
    #[error("{detail}")]
    Forbidden { detail: String, hint: String },
    #[error("{detail}")]
    RateLimited {
        retry_after: std::time::Duration,
        detail: String,
        /// What to do beside waiting, if anything.
        hint: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    /// No route matches the request (`METHOD /path`).
    #[error("no route {0}")]
    NoRoute(String),
    /// The route exists but not with this method (`METHOD /path`).
    #[error("{0}: this route does not accept that HTTP method")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the queue backend is unavailable")]
    Unavailable(String),
    /// A part this process does not run (e.g. no deploy target): 503 with what to do.
    #[error("{detail}")]
    NotConfigured {
        code: &'static str,
        detail: String,
        hint: String,
    },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

impl ApiError {
    pub fn unauthorized(code: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code,
            detail: detail.into(),
            hint: hint.into(),
        }
    }

    pub fn forbidden(detail: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError::Forbidden {
            detail: detail.into(),
            hint: hint.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>, hint: impl Into<String>, errors: Vec<FieldError>) -> Self {
        ApiError::Invalid {
            detail: detail.into(),
            hint: hint.into(),
            errors,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(detail) => ApiError::NotFound(detail),
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
            StoreError::Invalid(detail) => {
                ApiError::bad_request("invalid_request", detail, "fix the request and send it again")
            }
            StoreError::Unproven(detail) => ApiError::forbidden(
                detail,
                "prove the host first: `enclii domains add <host> --service <service>` (POST \
                 /v1/projects/{project}/domains) prints the TXT record to publish; once it is verified, the \
                 domain routes itself and any route on it or under it needs no further proof",
            ),
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause.to_string()),
            StoreError::Queue(q) => q.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The deploy target failed to answer a read (runtime logs, status, metrics): an internal error.
impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        ApiError::Internal(format!("deploy target: {e}"))
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::InvalidJob { .. } | QueueError::InvalidPipeline(_) | QueueError::Payload { .. } => {
                ApiError::BadRequest {
                    code: "invalid_job",
                    detail: e.to_string(),
                    hint: None,
                }
            }
            QueueError::JobNotFound(_) | QueueError::PipelineNotFound(_) => ApiError::NotFound(e.to_string()),
            QueueError::NotRetryable { .. } => ApiError::Conflict(e.to_string()),
            QueueError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut errors = Vec::new();
        let mut retry_after = None;
        let (status, code, title, detail, hint) = match self {
            ApiError::BadRequest { code, detail, hint } => (StatusCode::BAD_REQUEST, code, "Bad request", detail, hint),
            ApiError::Invalid {
                detail,
                hint,
                errors: fields,
            } => {
                errors = fields;
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "Invalid",
                    detail,
                    Some(hint),
                )
            }
            ApiError::Unauthorized { code, detail, hint } => {
                (StatusCode::UNAUTHORIZED, code, "Unauthorized", detail, Some(hint))
            }
            ApiError::Forbidden { detail, hint } => {
                (StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail, Some(hint))
            }
            ApiError::RateLimited {
                retry_after: wait,
                detail,
                hint,
            } => {
                let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
                retry_after = Some(seconds);
                let wait = format!("retry after {seconds} s (see the Retry-After header)");
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests",
                    detail,
                    Some(match hint {
                        Some(hint) => format!("{hint}; {wait}"),
                        None => wait,
                    }),
                )
            }
            ApiError::NotFound(detail) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                detail,
                Some("check the name or id; listing the collection shows what exists".into()),
            ),
            ApiError::NoRoute(place) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                format!("no route {place}"),
                Some("check the path; /v1/openapi.json lists the API's routes".into()),
            ),
            ApiError::MethodNotAllowed(place) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                format!("{place}: this route does not accept that HTTP method"),
                Some("see /v1/openapi.json for the methods each route takes".into()),
            ),
            ApiError::Conflict(detail) => (StatusCode::CONFLICT, "conflict", "Conflict", detail, None),
            ApiError::TooLarge(detail) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                detail,
                Some("keep payloads small: store large data elsewhere and pass a reference".into()),
            ),
            ApiError::Unavailable(internal) => {
                tracing::warn!(error = %internal, "queue backend unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backend_unavailable",
                    "Service unavailable",
                    "the database or queue backend cannot be reached".to_string(),
                    Some("check the database or Redis server the platform is configured with; retry later".into()),
                )
            }
            ApiError::NotConfigured { code, detail, hint } => (
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "Service unavailable",
                detail,
                Some(hint),
            ),
            ApiError::Internal(internal) => {
                tracing::error!(error = %internal, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "an internal error occurred; it has been logged".to_string(),
                    None,
                )
            }
        };
        let mut response = problem_response(status, code, title, detail, hint, errors);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// One problem+json answer.
fn problem_response(
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    hint: Option<String>,
    errors: Vec<FieldError>,
) -> Response {
    let problem = Problem {
        kind: format!("https://enclii.dev/problems/{code}"),
        title,
        status: status.as_u16(),
        code,
        detail,
        hint,
        errors,
    };
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], Json(problem)).into_response()
}

/// Makes every error answer problem+json. Handlers answer [`ApiError`]s, but some errors are
/// written below them in plain text — rejections of axum's own extractors (`Path`, `Query`,
/// `Json`) in handlers not using `crate::extract`'s, and layers' refusals; this rewrites those
/// with the request's method and path (where), the reason (what) and a hint (how to fix), keeping
/// the status and headers such as `Allow` and `Retry-After`.
pub(crate) async fn problems_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let place = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are a line; a larger body is not one of them and is not echoed.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut rewritten = plain_problem(status, &place, text);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name.clone(), value.clone());
        }
    }
    rewritten
}

/// A plain-text error answer as a problem: axum's rejection texts by their wording, the rest by
/// status.
fn plain_problem(status: StatusCode, place: &str, text: String) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let known = [
        (
            "Invalid URL: ",
            "invalid_path",
            "a path parameter is not valid",
            "fix the named path segment (ids are numbers); /v1/openapi.json lists each route's parameters",
        ),
        (
            "Failed to deserialize query string: ",
            "invalid_query",
            "the query string is not valid",
            "fix the named query parameter; /v1/openapi.json lists each route's parameters and their types",
        ),
        (
            "Failed to parse the request body as JSON: ",
            "malformed_json",
            "the body is not valid JSON",
            "send a valid JSON document",
        ),
        (
            "Failed to deserialize the JSON body into the target type: ",
            "invalid_body",
            "the body does not match the expected fields",
            "fix the named field and send again",
        ),
        (
            "Expected request with `Content-Type: application/json`",
            "unsupported_media_type",
            "the request body must be JSON",
            "send the header `Content-Type: application/json`",
        ),
    ];
    if let Some((prefix, code, what, hint)) = known.iter().find(|(prefix, ..)| text.starts_with(prefix)) {
        let why = text[prefix.len()..].trim();
        let detail = if why.is_empty() {
            format!("{place}: {what}")
        } else {
            format!("{place}: {what}: {why}")
        };
        return problem_response(status, code, title, detail, Some((*hint).into()), Vec::new());
    }
    let (code, detail, hint) = match status {
        StatusCode::NOT_FOUND => (
            "not_found",
            format!("{place}: no such route"),
            "see /v1/openapi.json for the API's routes",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{place}: this route does not accept that HTTP method"),
            "see the `Allow` header, or /v1/openapi.json for the methods each route takes",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            format!("{place}: the request body is too large"),
            "keep payloads small: store large data elsewhere and pass a reference",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            format!("{place}: the request body's media type is not accepted"),
            "send the Content-Type this route documents in /v1/openapi.json",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            format!("{place}: the request was not received in time"),
            "send the whole request promptly, then retry",
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            "rate_limited",
            format!("{place}: too many requests"),
            "retry after the time in the Retry-After header",
        ),
        s if s.is_server_error() => {
            // Plain server errors may carry internals: logged, never returned.
            tracing::error!(status = s.as_u16(), place, error = %text, "plain-text server error");
            return problem_response(
                status,
                "internal",
                title,
                "an internal error occurred; it has been logged".into(),
                None,
                Vec::new(),
            );
        }
        StatusCode::SERVICE_UNAVAILABLE => (
            "unavailable",
            format!("{place}: the server cannot answer now"),
            "retry later",
        ),
        _ if text.is_empty() => (
            "bad_request",
            format!("{place}: {title}"),
            "see /v1/openapi.json for what this route accepts",
        ),
        _ => (
            "bad_request",
            format!("{place}: {text}"),
            "see /v1/openapi.json for what this route accepts",
        ),
    };
    problem_response(status, code, title, detail, Some(hint.into()), Vec::new())
}
