//! What every handler shares: the application state ([`AppState`], built from [`ApiConfig`]), the
//! slot of the operators' shared queue snapshot loop ([`QueueWatch`]), and the lookups of queue
//! records that answer 404 when they are gone (`find_job`, `find_pipeline`).

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
    pub fn new(store: Arc<Store>, metrics: PrometheusHandle, config: ApiConfig) -> Self {
        Self {
            backend: store.queue(),
            store,
            metrics,
            gauges: Arc::default(),
            auth: Arc::new(Authenticator::new(config.oidc, config.rate_limit)),
            webhook_secret: config.webhook_secret.map(Arc::from),
            webhook_limiter: Arc::new(config.webhook_rate_limit.limiter()),
            api: config.serve_api,
            signatures: config.signatures,
            runtime: config.runtime,
            queue_watch: Arc::default(),
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
