//! Enclii's shared domain types. For now: the typed job kinds Roundhouse runs, their policies,
//! and the build-and-deploy pipeline that a push turns into. The Service Spec and the control
//! plane's data model join this crate with the API issue.

pub mod jobs;
pub mod pipeline;
