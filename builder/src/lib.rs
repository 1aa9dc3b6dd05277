//! Roundhouse's build handlers: the steps that turn a commit into a signed, inventoried image.
//!
//! `clone` fetches the exact commit with git2 and archives its tree in the artefact store (S3, or a directory on one node), so
//! that the steps after it can run on any worker; `build` unpacks the archive and builds it with
//! BuildKit on the Docker engine; `push` sends the image to the registry and records its digest;
//! `sbom` (CycloneDX 1.5: the image's OS packages and the repository's lockfiles) and `sign`
//! (cosign format) run in parallel on the pushed digest. Each step records its timings, its log
//! (live in the database, archived in the artefact store) and, on its last failed attempt, the release's failure.

mod config;
mod detect;
mod docker;
mod error;
mod git;
mod handlers;
mod limits;
mod lockfiles;
mod run;
mod sbom;
mod workspace;

pub use config::{BuildConfig, RegistryConfig};
pub use docker::{engine_version, image_name, image_reference};
pub use enclii_artefacts::{ArtefactConfig, ArtefactStore, S3Config, StoredArtefact};
pub use enclii_store::JobLog;
pub use error::StepError;
pub use handlers::{BuildSteps, lockbox_secret, project_signing_key, register};
pub use run::{RECORD_WAIT, StepRelease, release_for_step, stop_rest_of_run};
pub use sbom::{Inventory, Package, cyclonedx_json};
