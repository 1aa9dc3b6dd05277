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
    /// A route names a host the project has not proven it owns (no verified domain covers it).
    #[error("{0}")]
    Unproven(String),
    /// The database could not be reached; a retry may succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("control-plane migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A stored record no longer reads (for example a spec applied by an older version).
    #[error("{0}")]
    Corrupt(String),
    /// A sealed secret could not be opened (wrong master key or tampered row).
    #[error("a sealed secret could not be opened: {0}")]
    Sealing(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e)
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("it already exists".into()),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::Invalid("it refers to something that does not exist".into())
            }
            _ => StoreError::Database(e),
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
