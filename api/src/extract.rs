//! Extractors whose rejections are problem+json: the caller ([`Principal`], from the bearer
//! token), request bodies as JSON ([`Body`]) and as bytes ([`RawBody`]), both bounded by
//! [`BODY_LIMIT`].

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (bytes).
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// `Json<T>` whose rejections are problem+json with the reason and a hint.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                    "unsupported_media_type",
                    "the request body must be JSON",
                    "send the header `Content-Type: application/json`",
                ),
                JsonRejection::JsonDataError(e) => {
                    ApiError::bad_request("invalid_body", e.body_text(), "fix the named field and send again")
                }
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::bad_request("malformed_json", e.body_text(), "the body is not valid JSON")
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
                }
                other => ApiError::bad_request(
                    "invalid_body",
                    other.body_text(),
                    format!("bodies are limited to {BODY_LIMIT} bytes of JSON"),
                ),
            }),
        }
    }
}

/// The raw request body (Service Specs, webhooks), with problem+json rejections.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
                } else {
                    ApiError::bad_request("invalid_body", rejection.body_text(), "send the body again")
                }
            })
    }
}

/// The caller, authenticated from `Authorization: Bearer <token>` (a 401 problem without one).
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|h| h.to_str().ok());
        state.auth.authenticate(&state.store, header).await
    }
}
