//! The artefact store and sealed streams.
//!
//! [`ArtefactStore`] keeps blobs by key in an S3-compatible bucket or, on one node, in a
//! directory. Small artefacts (logs, SBOMs, source archives) go through [`ArtefactStore::put`];
//! large ones (backups) are streamed with [`ArtefactStore::put_stream`], which uploads everything
//! first and makes the key visible only at [`PendingArtefact::commit`], so an interrupted upload
//! leaves nothing listed. [`sealed`] encrypts such a stream with a data key of its own.

pub mod sealed;
mod store;
mod stream;

use enclii_signing::Secret;

pub use sealed::{DataKey, SealError, Sealed};
pub use store::{ArtefactConfig, ArtefactStore, StoredArtefact};
pub use stream::PendingArtefact;

/// The S3-compatible store for source archives, logs, SBOMs and backups.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http://127.0.0.1:8014`; `None` uses AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Secret,
}

/// How the artefact store fails. Each message says what failed, where, and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtefactError {
    /// The bucket or the directory did not answer as it should (a network hiccup, a full disk):
    /// another attempt may pass.
    #[error("{0}")]
    Unavailable(String),
    /// A key that is not a plain relative path; no attempt will pass.
    #[error("{0}")]
    BadKey(String),
}

impl ArtefactError {
    /// Whether another attempt could pass.
    pub fn is_transient(&self) -> bool {
        matches!(self, ArtefactError::Unavailable(_))
    }
}
