//! Errors: the OCI error codes a client sees, and storage failures that stay in the server log.

use std::fmt;
use std::path::{Path, PathBuf};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The error codes of the OCI distribution spec (and Docker's registry v2) that this registry
/// answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    PaginationNumberInvalid,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
}

impl ErrorCode {
    /// The code as it appears in the JSON body, e.g. `BLOB_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::TagInvalid => "TAG_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
        }
    }

    /// The status Docker's registry answers this code with.
    fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown | Self::BlobUploadUnknown | Self::ManifestUnknown | Self::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::PaginationNumberInvalid
            | Self::SizeInvalid
            | Self::TagInvalid => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong: a request the registry refuses (answered with its OCI code and message), or
/// storage that failed (answered with a 500 whose body names no path; the details are logged).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{code}: {message}")]
    Rejected {
        code: ErrorCode,
        status: StatusCode,
        message: String,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Storage {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// A refusal with the code's usual status.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            status: code.status(),
            message: message.into(),
        }
    }

    /// A refusal with another status than the code's usual one (413, 416).
    pub(crate) fn with_status(code: ErrorCode, status: StatusCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            status,
            message: message.into(),
        }
    }

    /// The OCI code of a refusal; `None` for a storage failure.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            Self::Storage { .. } => None,
        }
    }
}

/// `map_err(io("read", &path))`: an I/O error with what was being done to which file.
pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + use<> {
    let path = path.to_owned();
    move |source| RegistryError::Storage { action, path, source }
}

/// The OCI error body: `{"errors":[{"code":…,"message":…,"detail":null}]}`.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] }).to_string()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Self::Rejected { code, status, message } => (*status, code.as_str(), message.as_str()),
            Self::Storage { .. } => {
                tracing::error!(error = %self, "registry storage failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "the registry could not read or write its storage; see the server log",
                )
            }
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            error_body(code, message),
        )
            .into_response();
        if self.code() == Some(ErrorCode::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"enclii\""),
            );
        }
        response
    }
}
