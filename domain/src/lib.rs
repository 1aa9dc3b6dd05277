//! Enclii's shared domain types: the typed job kinds Roundhouse runs, their policies, the
//! build-and-deploy pipeline that a push turns into, the Service Spec (parsing and strict
//! validation) and the GitHub webhook payloads Enclii reacts to. The control plane's data model
//! joins this crate with the API issue.

pub mod addons;
pub mod credentials;
pub mod dotenv;
pub mod github;
pub mod image;
pub mod jobs;
pub mod ownership;
pub mod pipeline;
pub mod secrets;
mod service_key;
pub mod spec;

pub use service_key::ServiceKey;
