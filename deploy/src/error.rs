/// Why a target could not do what it was asked.
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
    /// The Docker engine failed or could not be reached.
    #[error("docker engine: {0}")]
    Docker(String),
    /// The Kubernetes API failed or could not be reached.
    #[error("kubernetes API: {0}")]
    Kubernetes(String),
    /// Metrics could not be read (router or Prometheus).
    #[error("metrics: {0}")]
    Metrics(String),
}

impl DeployError {
    /// A failure no retry can fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DeployError::Refused(_) | DeployError::Unhealthy { .. } | DeployError::NotFound(_)
        )
    }
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;
