//! Why a target could not do what it was asked.

/// The error a target's client library (bollard, kube, reqwest, …) failed with, kept as the
/// [`std::error::Error::source`] of a [`DeployError`] so that logs can show the chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a target could not do what it was asked.
///
/// The `message` of `Docker`, `Kubernetes` and `Metrics` is the text users see (it already names
/// the cause, as it always did); `source`, when there is one, is the underlying error itself.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The request cannot succeed as given (over quota, a route bound elsewhere, a bad image);
    /// retrying will not help. The message says what to change.
    #[error("{0}")]
    Refused(String),
    /// The release started but did not become healthy in time; what was started is removed.
    #[error("release {release} did not become healthy within {waited_secs} s: {detail}")]
    Unhealthy {
        release: i64,
        waited_secs: u64,
        detail: String,
    },
    /// The target named has nothing for this service or release.
    #[error("{0}")]
    NotFound(String),
    /// A newer deployment of the service was applied already: this older one must not replace
    /// it (its job came late — retried, or claimed after the newer one's).
    #[error("deployment {deployment} is older than deployment {applied}, which the target applied already")]
    Superseded { deployment: i64, applied: i64 },
    /// The Docker engine failed or could not be reached.
    #[error("docker engine: {message}")]
    Docker {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The Kubernetes API failed or could not be reached.
    #[error("kubernetes API: {message}")]
    Kubernetes {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Metrics could not be read (router or Prometheus).
    #[error("metrics: {message}")]
    Metrics {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl DeployError {
    /// A failure no retry can fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DeployError::Refused(_)
                | DeployError::Unhealthy { .. }
                | DeployError::NotFound(_)
                | DeployError::Superseded { .. }
        )
    }

    /// The Docker engine failed with `source`; `message` is what users read.
    pub fn docker(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        DeployError::Docker {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The Docker engine answered something unusable (no underlying error).
    pub fn docker_message(message: impl Into<String>) -> Self {
        DeployError::Docker {
            message: message.into(),
            source: None,
        }
    }

    /// The Kubernetes API (or the client's configuration) failed with `source`.
    pub fn kubernetes(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        DeployError::Kubernetes {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The cluster holds something unusable (no underlying error).
    pub fn kubernetes_message(message: impl Into<String>) -> Self {
        DeployError::Kubernetes {
            message: message.into(),
            source: None,
        }
    }

    /// Metrics could not be read because of `source`.
    pub fn metrics(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        DeployError::Metrics {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Metrics cannot be read as configured (no underlying error).
    pub fn metrics_message(message: impl Into<String>) -> Self {
        DeployError::Metrics {
            message: message.into(),
            source: None,
        }
    }
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_message_is_unchanged_and_the_cause_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = DeployError::docker(format!("listing containers: {io}"), io);
        assert_eq!(e.to_string(), "docker engine: listing containers: refused");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("refused"));
        assert!(!e.is_permanent());
        assert!(DeployError::metrics_message("no Prometheus").source().is_none());
    }
}
