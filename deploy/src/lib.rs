//! Deploy: turns a ready release into running software and keeps it healthy.
//!
//! The queue handlers (`deploy`, `canary-analyze`, `preview-teardown`, `job-run`, `cost-sample`)
//! join the control plane (the store) and a deploy target, which they know only through the
//! [`Target`] trait of `enclii-deploy-contract` (re-exported here). The targets live in crates of
//! their own: `enclii-deploy-docker` (one engine behind the Junctions router) and
//! `enclii-deploy-kubernetes`. `domain-verify` (custom domains' proof of ownership) and
//! `cert-order` (their certificates from an ACME server) live here too: they make routes and
//! what the routers serve, though they need no target.

mod addon_backups;
mod addons;
pub mod certificates;
pub mod domains;
pub mod events;
pub mod handlers;
mod routes;
pub mod timetable;

pub use enclii_deploy_contract::model::*;
pub use enclii_deploy_contract::{DeployError, Target};
pub use enclii_deploy_contract::{analysis, error, model, target};
pub use handlers::{Deployer, DeployerConfig, register};
