//! What every handler shares: the application state ([`AppState`], built from [`ApiConfig`] and
//! [`ClientLimits`]), the slot of the operators' shared queue snapshot loop ([`QueueWatch`]), and
//! the lookups of queue records that answer 404 when they are gone (`find_job`, `find_pipeline`).

use std::sync::Arc;

use enclii_queue::Backend;
use enclii_store::Store;
use governor::DefaultKeyedRateLimiter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::auth::{Authenticator, RateLimit};
use crate::error::ApiError;
use crate::metrics::DepthGauges;

/// What the API needs to answer requests.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Arc<Store>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) gauges: Arc<DepthGauges>,
    pub(crate) auth: Arc<Authenticator>,
    /// The secret GitHub signs deliveries with; webhooks are refused without one.
    pub(crate) webhook_secret: Option<Arc<str>>,
    pub(crate) webhook_limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Serve `/v1` routes (the api role); worker and scheduler roles expose health and metrics only.
    pub(crate) api: bool,
    pub(crate) signatures: Option<Arc<dyn SignaturePolicy>>,
    /// The deploy target, read by the runtime routes (logs, status); `None`: they answer 503.
    pub(crate) runtime: Option<Arc<dyn enclii_deploy_contract::Target>>,
    /// The operators' live queue view, shared by every watcher of this process.
    pub(crate) queue_watch: Arc<QueueWatch>,
    /// Take the client's address from `X-Forwarded-For` (see [`ClientLimits`]).
    pub(crate) trust_forwarded_for: bool,
    /// Live job-log streams: one poller per job, and how many streams a token may hold.
    pub(crate) log_tails: Arc<crate::logs::LogTails>,
}

/// API settings beyond the store.
pub struct ApiConfig {
    pub oidc: Option<enclii_auth::oidc::OidcVerifier>,
    pub webhook_secret: Option<String>,
    /// Requests per token.
    pub rate_limit: RateLimit,
    /// Webhook deliveries per project.
    pub webhook_rate_limit: RateLimit,
    pub serve_api: bool,
    /// Checks a release's image signature in its registry before it deploys (the deploy policy);
    /// `None`: only the signature reference recorded by the pipeline is required.
    pub signatures: Option<Arc<dyn SignaturePolicy>>,
    /// The deploy target this process runs, for runtime logs and status (read only).
    pub runtime: Option<Arc<dyn enclii_deploy_contract::Target>>,
}

pub use enclii_store::SignaturePolicy;

/// Limits on what one client may cost the API beside the per-token request rate
/// ([`ApiConfig::rate_limit`]). Separate from `ApiConfig` so that existing callers that build
/// it field by field keep compiling; pass them with [`AppState::with_limits`].
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Failed authentications (`401`s) per client address; past them its requests are refused
    /// with `429` before their token is looked up. Needs the client's address: serve the router
    /// with `into_make_service_with_connect_info::<SocketAddr>()`, or set `trust_forwarded_for`.
    pub auth_failures: RateLimit,
    /// The API is reached only through a proxy that appends the client's address to
    /// `X-Forwarded-For`: take the client's address from its last entry. Leave it off when
    /// clients can reach the API directly, or they could pick the address they are counted as.
    pub trust_forwarded_for: bool,
    /// Live job-log streams (`GET /v1/jobs/{id}/logs/stream`) one token may hold open at once.
    pub log_streams_per_token: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            auth_failures: RateLimit::AUTH_FAILURES,
            trust_forwarded_for: false,
            log_streams_per_token: 16,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            oidc: None,
            webhook_secret: None,
            rate_limit: RateLimit::DEFAULT,
            webhook_rate_limit: RateLimit {
                per_minute: 600,
                burst: 1200,
            },
            serve_api: true,
            signatures: None,
            runtime: None,
        }
    }
}

impl AppState {
    /// The state with the default [`ClientLimits`].
    pub fn new(store: Arc<Store>, metrics: PrometheusHandle, config: ApiConfig) -> Self {
        Self::with_limits(store, metrics, config, ClientLimits::default())
    }

    pub fn with_limits(store: Arc<Store>, metrics: PrometheusHandle, config: ApiConfig, limits: ClientLimits) -> Self {
        Self {
            backend: store.queue(),
            store,
            metrics,
            gauges: Arc::default(),
            auth: Arc::new(Authenticator::new(config.oidc, config.rate_limit, limits.auth_failures)),
            webhook_secret: config.webhook_secret.map(Arc::from),
            webhook_limiter: Arc::new(config.webhook_rate_limit.limiter()),
            api: config.serve_api,
            signatures: config.signatures,
            runtime: config.runtime,
            queue_watch: Arc::default(),
            trust_forwarded_for: limits.trust_forwarded_for,
            log_tails: Arc::new(crate::logs::LogTails::new(limits.log_streams_per_token)),
        }
    }
}

/// The latest read of the queue view: the snapshot, or why it could not be read (sent to
/// watchers as a `problem` event, so that a dashboard says so instead of waiting).
pub(crate) type Snapshot = Option<Arc<Result<serde_json::Value, String>>>;

/// Produces the queue snapshot for every watcher of this API process: one read loop however many
/// dashboards are open, started by the first watcher and ended when the last one leaves (the loop
/// itself is `operators`' business).
#[derive(Default)]
pub struct QueueWatch {
    producer: std::sync::Mutex<std::sync::Weak<watch::Sender<Snapshot>>>,
}

impl QueueWatch {
    /// A receiver of the running read loop's snapshots; when none runs, `start` is given the
    /// sender of a new one (the loop should end when the sender has no receivers left).
    pub(crate) fn subscribe(&self, start: impl FnOnce(Arc<watch::Sender<Snapshot>>)) -> watch::Receiver<Snapshot> {
        let mut producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = producer.upgrade() {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        *producer = Arc::downgrade(&tx);
        start(tx);
        rx
    }
}

pub(crate) async fn find_job(state: &AppState, id: i64) -> Result<enclii_queue::JobRecord, ApiError> {
    state
        .backend
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} does not exist (it may have been pruned)")))
}

pub(crate) async fn find_pipeline(state: &AppState, id: i64) -> Result<enclii_queue::PipelineRecord, ApiError> {
    state
        .backend
        .pipeline(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("pipeline {id} does not exist")))
}
