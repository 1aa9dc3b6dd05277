//! Extractors whose rejections are problem+json: the caller ([`Principal`], from the bearer
//! token), request bodies as JSON ([`Body`]) and as bytes ([`RawBody`]), both bounded by
//! [`BODY_LIMIT`], path parameters ([`Path`]) and query strings ([`Query`]) — each rejection
//! says what is wrong, where, and how to fix it. (`error::problems_only` rewrites any plain-text
//! rejection that slips through, e.g. axum's own `Path` in a handler not yet using these.)

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::ConnectInfo;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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

/// `axum::extract::Path` whose rejection names the parameter, its value and the type it needs.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_problem(parts.uri.path(), rejection)),
        }
    }
}

fn path_problem(path: &str, rejection: PathRejection) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        // A route whose template lacks the parameters its handler reads: the server's fault.
        return ApiError::Internal(format!("path parameters of {path}: {}", rejection.body_text()));
    };
    let detail = match e.kind() {
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => format!(
            "path parameter `{key}` of {path} is `{value}`, not {}",
            type_name(expected_type)
        ),
        ErrorKind::ParseErrorAtIndex {
            index,
            value,
            expected_type,
        } => format!(
            "path parameter {} of {path} is `{value}`, not {}",
            index + 1,
            type_name(expected_type)
        ),
        ErrorKind::ParseError { value, expected_type } => {
            format!("`{value}` in the path {path} is not {}", type_name(expected_type))
        }
        ErrorKind::InvalidUtf8InPathParam { key } => format!("path parameter `{key}` of {path} is not UTF-8"),
        _ if e.status().is_server_error() => {
            return ApiError::Internal(format!("path parameters of {path}: {}", e.body_text()));
        }
        _ => format!("the path {path} is not valid: {}", e.body_text()),
    };
    ApiError::bad_request(
        "invalid_path",
        detail,
        "fix the named path segment (ids of jobs, releases, deployments and pipelines are numbers); \
         /v1/openapi.json lists each route's parameters",
    )
}

/// How a rejection names the type a value must have: numbers in words, the rest as Rust names.
fn type_name(rust: &str) -> String {
    match rust {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => format!("a whole number (`{rust}`)"),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => format!("a non-negative whole number (`{rust}`)"),
        "bool" => "`true` or `false`".to_string(),
        other => format!("a `{other}`"),
    }
}

/// `axum::extract::Query` whose rejection names the parameter that did not parse.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| query_problem(parts.uri.path(), &rejection))
    }
}

fn query_problem(path: &str, rejection: &QueryRejection) -> ApiError {
    let text = rejection.body_text();
    // axum's text is "Failed to deserialize query string: <field>: <why>".
    let why = text.split_once(": ").map_or(text.as_str(), |(_, why)| why);
    ApiError::bad_request(
        "invalid_query",
        format!("the query string of {path} is not valid: {why}"),
        "fix the named query parameter (numbers are whole and most are not negative, e.g. `limit=50`); \
         /v1/openapi.json lists each route's parameters and their types",
    )
}

/// The caller, authenticated from `Authorization: Bearer <token>` (a 401 problem without one).
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|h| h.to_str().ok());
        let client = client_address(parts, state.trust_forwarded_for);
        state.auth.authenticate(&state.store, header, client).await
    }
}

/// The client's address: the peer of the connection (when the server is served with
/// `into_make_service_with_connect_info`), or behind a trusted proxy the last address of
/// `X-Forwarded-For` — the one that proxy appended, so a client cannot choose it.
fn client_address(parts: &Parts, trust_forwarded_for: bool) -> Option<IpAddr> {
    let forwarded = || {
        let header = parts.headers.get_all("x-forwarded-for").iter().next_back()?;
        header.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
    };
    let peer = || {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    };
    if trust_forwarded_for {
        forwarded().or_else(peer)
    } else {
        peer()
    }
}
