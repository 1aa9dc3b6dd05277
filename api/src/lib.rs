//! Switchyard, the HTTP API (axum). Handlers validate, call the queue, and answer; they never do
//! the work inline and know nothing of SQL.
//!
//! Routes so far: health, Prometheus metrics, and the operator's queue controls (enqueue,
//! inspect, cancel, retry, per-project limits). Authentication, projects, services and
//! webhooks arrive with the API issue; until then the server binds to loopback by default.

mod error;
pub mod metrics;
mod routes;

pub use error::{ApiError, Problem};
pub use routes::{AppState, router};
