//! What a job handler is, how it fails, and the registry of handlers by kind.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use enclii_queue::{ClaimedJob, JobKind};
use tokio_util::sync::CancellationToken;

/// How an attempt failed, and so what happens next (apalis's abort / retry-after vocabulary).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying on the kind's backoff schedule, while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Worth retrying after this delay (e.g. a rate-limited upstream said when).
    #[error("{message} (retry after {after:?})")]
    RetryAfter { after: Duration, message: String },
    /// Retrying cannot help (bad payload, invalid input): the job goes `dead` now.
    #[error("{0}")]
    Abort(String),
}

impl JobError {
    pub fn retry(message: impl std::fmt::Display) -> Self {
        JobError::Retry(message.to_string())
    }

    pub fn abort(message: impl std::fmt::Display) -> Self {
        JobError::Abort(message.to_string())
    }
}

/// What a handler gets: the claimed job and a token that fires when the job must stop
/// (timeout, cancellation, lost lease, shutdown deadline). Handlers that spawn external work
/// (a build on BuildKit, a process) must stop it when the token fires; plain async code is
/// stopped anyway because its future is dropped.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub job: ClaimedJob,
    pub cancel: CancellationToken,
}

impl JobContext {
    /// Whether this is the job's last attempt (`attempt >= policy.max_attempts`): a failure now
    /// is final, so a handler records it instead of leaving it to a retry.
    pub fn is_last_attempt(&self) -> bool {
        self.job.attempt >= self.job.policy.max_attempts
    }

    /// Decodes the payload, without the reserved trace key (`_trace`); a payload that does not
    /// match the kind's type is not retryable.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        let payload = enclii_queue::trace::without_trace(&self.job.payload).into_owned();
        serde_json::from_value(payload).map_err(|e| {
            JobError::Abort(format!(
                "malformed payload for a `{}` job: {e}; fix the producer and retry the job",
                self.job.kind
            ))
        })
    }
}

/// Runs one kind of job.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError>;
}

/// A handler for a typed [`JobKind`]: receives the decoded payload.
#[async_trait]
pub trait TypedHandler<J: JobKind>: Send + Sync + 'static {
    async fn handle(&self, job: J, ctx: &JobContext) -> Result<(), JobError>;
}

struct Typed<J, H> {
    handler: H,
    _kind: PhantomData<fn() -> J>,
}

#[async_trait]
impl<J: JobKind, H: TypedHandler<J>> Handler for Typed<J, H> {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let job: J = ctx.payload()?;
        self.handler.handle(job, &ctx).await
    }
}

/// Handlers by kind. A worker claims only the kinds it has handlers for, so jobs of other kinds
/// wait for a worker that can run them instead of failing.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an untyped handler for `kind`.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// Registers a handler for the typed kind `J`.
    pub fn register_typed<J: JobKind, H: TypedHandler<J>>(&mut self, handler: H) -> &mut Self {
        self.register(
            J::KIND,
            Typed {
                handler,
                _kind: PhantomData,
            },
        )
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}
