//! Switchyard, the HTTP API (axum). Handlers authenticate, authorise, validate, make one store or
//! queue call and answer; they never do the work inline and know nothing of SQL.
//!
//! - [`auth`]: bearer tokens (personal access tokens, OIDC), roles, scopes, rate limits;
//!   `throttle`: failed authentications per client address.
//! - `control`: projects, environments, services, releases, deployments, secrets, routes,
//!   members, tokens, audit (one module each).
//! - `jobs`: the queue's jobs and pipeline runs (enqueue, read, cancel, retry) and its depth.
//! - `logs`: what a job printed, as pages or live (Server-Sent Events).
//! - `timetable`: one-off job runs and their history, the cost report, resuming paused
//!   environments.
//! - `runtime`: services' runtime logs and status (from the deploy target), CLI previews.
//! - `operators`: the queue views and controls (jobs by state, throughput, workers, limits,
//!   pauses) and the live streams the dashboard watches.
//! - `dashboard`: the web dashboard's static page (`api/dashboard/`), served at `/ui/`.
//! - `trace`: the request middleware (an `http_request` span in the request's trace;
//!   `traceparent` in and out).
//! - `webhooks`: GitHub deliveries.
//! - `routes`: the router, health, metrics and the OpenAPI document; `doc`: what every
//!   operation of that document shares (problem+json answers).
//! - `state`, `extract`, `error`: what handlers share — the application state and the queue
//!   lookups, the extractors (caller, bodies), problem+json errors. Handlers import these, never
//!   `routes`.

pub mod auth;
mod control;
mod dashboard;
mod doc;
mod error;
mod extract;
mod jobs;
mod logs;
pub mod metrics;
mod operators;
mod routes;
mod runtime;
mod state;
mod throttle;
mod timetable;
mod trace;
mod views;
mod webhooks;

pub use error::{ApiError, FieldError, Problem};
pub use routes::{openapi, router};
pub use state::{ApiConfig, AppState, ClientLimits, DomainSettings, SignaturePolicy};
