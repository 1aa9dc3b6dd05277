//! API errors as `application/problem+json` (RFC 9457) with a stable `code`, a safe message and a
//! hint. Internal details are logged, never returned.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use enclii_queue::QueueError;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        code: &'static str,
        detail: String,
        hint: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the queue backend is unavailable")]
    Unavailable(String),
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
        let (status, code, title, detail, hint) = match self {
            ApiError::BadRequest { code, detail, hint } => (StatusCode::BAD_REQUEST, code, "Bad request", detail, hint),
            ApiError::NotFound(detail) => (StatusCode::NOT_FOUND, "not_found", "Not found", detail, None),
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
                    "the queue backend cannot be reached".to_string(),
                    Some("check the database or Redis server the platform is configured with; retry later".into()),
                )
            }
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
        };
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(problem),
        )
            .into_response()
    }
}
