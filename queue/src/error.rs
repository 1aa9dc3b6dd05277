//! Errors of the queue layer. Messages say what failed and how to fix it; they never carry
//! connection strings or payload contents.

use crate::job::{JobId, JobState, PipelineId};

/// The underlying client library's error kept as a cause.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "cannot reach the {backend} queue backend: {message}. Check that the server is running and that the URL is right"
    )]
    Unavailable {
        backend: &'static str,
        message: String,
        /// The client library's error, for logs that print the chain (never one carrying a URL).
        #[source]
        source: Option<BoxedCause>,
    },

    #[error("the {backend} queue backend failed: {message}")]
    Backend {
        backend: &'static str,
        message: String,
        #[source]
        source: Option<BoxedCause>,
    },

    #[error("invalid job: `{field}` {problem}")]
    InvalidJob { field: String, problem: String },

    #[error("invalid pipeline: {0}")]
    InvalidPipeline(String),

    #[error("the payload of a `{kind}` job does not serialize: {source}")]
    Payload {
        kind: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("job {0} does not exist (it may have been pruned)")]
    JobNotFound(JobId),

    #[error("pipeline {0} does not exist")]
    PipelineNotFound(PipelineId),

    #[error("job {id} is {state}; only dead or cancelled jobs can be retried")]
    NotRetryable { id: JobId, state: JobState },

    #[error(
        "job {id} belongs to pipeline {pipeline}, which a newer run superseded; retry or trigger the newer run instead"
    )]
    SupersededPipeline { id: JobId, pipeline: PipelineId },

    #[error("unsupported queue URL scheme `{0}`: use postgres://, sqlite:// or redis://")]
    UnsupportedUrl(String),

    #[error("stored queue data is corrupt: {0}")]
    Corrupt(String),
}

impl QueueError {
    pub(crate) fn sql(backend: &'static str, err: sqlx::Error) -> Self {
        // sqlx's Display for connection errors does not include the URL or password.
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => QueueError::Unavailable {
                backend,
                message: err.to_string(),
                source: Some(Box::new(err)),
            },
            other => QueueError::Backend {
                backend,
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }

    /// True when the backend could not be reached (worth retrying later), as opposed to a bad request.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Unavailable { .. })
    }
}

impl From<redis::RedisError> for QueueError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() || err.is_connection_dropped() {
            QueueError::Unavailable {
                backend: "redis",
                message: err.to_string(),
                source: Some(Box::new(err)),
            }
        } else {
            QueueError::Backend {
                backend: "redis",
                message: err.to_string(),
                source: Some(Box::new(err)),
            }
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
