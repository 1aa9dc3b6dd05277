//! API errors as `application/problem+json` (RFC 9457) with a stable `code`, a safe message and a
//! hint. Internal details are logged, never returned.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use enclii_deploy_contract::DeployError;
use enclii_queue::QueueError;
use enclii_store::StoreError;
use serde::Serialize;

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
    },
    #[error("{0}")]
    NotFound(String),
    #[error("this route does not accept that HTTP method")]
    MethodNotAllowed,
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
            } => {
                let seconds = wait.as_secs_f64().ceil() as u64;
                retry_after = Some(seconds);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests",
                    detail,
                    Some(format!("retry after {seconds} s (see the Retry-After header)")),
                )
            }
            ApiError::NotFound(detail) => (StatusCode::NOT_FOUND, "not_found", "Not found", detail, None),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                "this route does not accept that HTTP method".into(),
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
        let problem = Problem {
            kind: format!("https://enclii.dev/problems/{code}"),
            title,
            status: status.as_u16(),
            code,
            detail,
            hint,
            errors,
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(problem),
        )
            .into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
