//! Deploy: turns a ready release into running software and keeps it healthy.
//!
//! One [`Target`] trait, two targets: a single Docker engine behind the Junctions router (the
//! embedded default) and Kubernetes (server-side apply). The queue handlers that drive them
//! (`deploy`, `canary-analyze`, `preview-teardown`, `job-run`, `cost-sample`) know the target
//! only through the trait.

pub mod analysis;
pub mod docker;
pub mod error;
pub mod handlers;
pub mod junctions;
pub mod model;
pub mod target;
pub mod timetable;

pub use docker::{DockerTarget, DockerTargetConfig, RegistryLogin};
pub use error::DeployError;
pub use handlers::{Deployer, DeployerConfig, register};
pub use junctions::Junctions;
pub use model::*;
pub use target::Target;
