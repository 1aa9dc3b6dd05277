use enclii_queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with existing state (a duplicate, a taken route, a release not ready).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not acceptable in the current state.
    #[error("{0}")]
    Invalid(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A sealed secret could not be opened (wrong master key or tampered row).
    #[error("a sealed secret could not be opened: {0}")]
    Sealing(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("it already exists".into()),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::Invalid("it refers to something that does not exist".into())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Queue(q) => q.is_transient(),
            _ => false,
        }
    }
}
