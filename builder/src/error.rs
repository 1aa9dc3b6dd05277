//! How a build step fails: a message that says what went wrong and what to do, and whether
//! another attempt could help.

use enclii_worker::JobError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Shown to users on the release and in the job: what failed, where, and how to fix it.
    pub message: String,
    /// A transient failure (network, registry, S3) worth another attempt.
    pub retryable: bool,
}

impl StepError {
    /// A failure another attempt will not fix (a broken Dockerfile, a missing repository).
    pub fn fatal(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure that may pass (a registry or S3 hiccup).
    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn into_job_error(self) -> JobError {
        if self.retryable {
            JobError::Retry(self.message)
        } else {
            JobError::Abort(self.message)
        }
    }
}

impl From<enclii_store::StoreError> for StepError {
    fn from(e: enclii_store::StoreError) -> Self {
        StepError::transient(format!("control-plane store: {e}"))
    }
}

impl From<enclii_artefacts::ArtefactError> for StepError {
    fn from(e: enclii_artefacts::ArtefactError) -> Self {
        StepError {
            retryable: e.is_transient(),
            message: e.to_string(),
        }
    }
}
