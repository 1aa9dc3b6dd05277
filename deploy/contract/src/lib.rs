//! The deploy-target contract: one [`Target`] trait, the plain data a target is given and
//! reports (`model`), [`DeployError`], and the canary verdict (`analysis`, a pure function).
//!
//! Nothing here touches the store, the queue or an engine: the Docker target
//! (`enclii-deploy-docker`), the Kubernetes target (`enclii-deploy-kubernetes`), the queue
//! handlers (`enclii-deploy`) and the API depend on this crate and meet only through it.

pub mod analysis;
pub mod error;
pub mod model;
pub mod target;

pub use error::{BoxError, DeployError};
pub use model::*;
pub use target::{Removal, ReplicaEvents, Target};
