//! The control plane's typed vocabulary: statuses, triggers and strategies as enums, stored as
//! their text (the columns stay `TEXT`) and written in JSON as the same text. A value read from
//! the database that is not one of an enum's is a decoding error naming it, never a panic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Postgres, Sqlite, Type};

use crate::db::{Bind, Value};

/// A word that is not one of a vocabulary's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {kind}; expected one of: {expected}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident ($kind:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        kind: $kind,
                        value: text.to_string(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, Postgres>>::decode(value)?.parse()?)
            }
        }

        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <&str as Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <&str as Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, Sqlite>>::decode(value)?.parse()?)
            }
        }

        impl Bind for &$name {
            fn value(self) -> Value {
                (*self).value()
            }
            fn null() -> Value {
                Value::Text(None)
            }
        }

        impl Bind for $name {
            fn value(self) -> Value {
                Value::Text(Some(self.as_str().to_string()))
            }
            fn null() -> Value {
                Value::Text(None)
            }
        }
    };
}

vocabulary! {
    /// Where a release's pipeline is.
    ReleaseStatus ("release status") {
        Building = "building",
        /// Image pushed, SBOM stored and signature made: deployable.
        Ready = "ready",
        Failed = "failed",
        /// A newer push to the same service and branch took over before it was ready.
        Superseded = "superseded",
    }
}

vocabulary! {
    /// What started a build.
    ReleaseTrigger ("release trigger") {
        /// A push to the service's branch (GitHub webhook).
        Push = "push",
        /// A pull request's preview (GitHub webhook).
        PullRequest = "pull_request",
        /// A call to the API (CLI, dashboard).
        Api = "api",
    }
}

vocabulary! {
    /// Where a deployment is.
    DeploymentStatus ("deployment status") {
        /// Waiting for its deploy job.
        Pending = "pending",
        /// The target is starting the release.
        Running = "running",
        /// The release serves a share of the traffic beside the stable one, under analysis.
        Canary = "canary",
        /// The release serves all traffic.
        Succeeded = "succeeded",
        /// The release never served (unhealthy, refused, …); the previous one still does.
        Failed = "failed",
        /// The canary failed its analysis and was removed; the stable release serves all traffic.
        RolledBack = "rolled_back",
        /// A newer deployment of the same service took over before this one finished.
        Superseded = "superseded",
        /// Its environment was torn down: a preview closed or expired, or the environment deleted.
        TornDown = "torn_down",
    }
}

/// A deployment starts `pending`.
impl Default for DeploymentStatus {
    fn default() -> Self {
        Self::Pending
    }
}

impl DeploymentStatus {
    /// Still in progress: a newer deployment supersedes it.
    pub const ACTIVE: [Self; 3] = [Self::Pending, Self::Running, Self::Canary];

    pub fn is_terminal(self) -> bool {
        !Self::ACTIVE.contains(&self)
    }
}

vocabulary! {
    /// How a deployment replaces the running release.
    Strategy ("deploy strategy") {
        /// Replace replicas one by one, each healthy before the next.
        Rolling = "rolling",
        /// Send a share of the traffic to the new release, analyse it, then promote or roll back.
        Canary = "canary",
    }
}

/// The Service Spec's default.
impl Default for Strategy {
    fn default() -> Self {
        Self::Rolling
    }
}

impl From<enclii_domain::spec::DeployStrategy> for Strategy {
    fn from(strategy: enclii_domain::spec::DeployStrategy) -> Self {
        match strategy {
            enclii_domain::spec::DeployStrategy::Rolling => Strategy::Rolling,
            enclii_domain::spec::DeployStrategy::Canary => Strategy::Canary,
        }
    }
}

vocabulary! {
    /// How one step of a release's pipeline went.
    StepStatus ("step status") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

vocabulary! {
    /// Where a run of a service's job is.
    JobRunStatus ("job run status") {
        /// Its `job-run` job waits in the queue.
        Queued = "queued",
        /// An attempt is running (a failed attempt the queue retries runs again).
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        /// A cron fire while the previous run was still queued or running: nothing ran.
        Skipped = "skipped",
    }
}

impl JobRunStatus {
    pub const FINAL: [Self; 4] = [Self::Succeeded, Self::Failed, Self::Cancelled, Self::Skipped];

    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }
}

vocabulary! {
    /// What started a job run.
    JobRunTrigger ("job run trigger") {
        Cron = "cron",
        Manual = "manual",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_through_text_and_json() {
        for status in DeploymentStatus::ALL {
            assert_eq!(status.as_str().parse::<DeploymentStatus>().unwrap(), *status);
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it() {
        let error = "half_done".parse::<ReleaseStatus>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "`half_done` is not a release status; expected one of: building, ready, failed, superseded"
        );
    }
}

vocabulary! {
    /// Where a custom domain's proof of ownership is.
    DomainStatus ("domain status") {
        /// Waiting for its TXT record; checked with backoff until its deadline.
        Pending = "pending",
        /// Proven: routed to its service.
        Verified = "verified",
        /// Not proven before its deadline; re-check to try again.
        Failed = "failed",
    }
}

vocabulary! {
    /// Where a host's TLS certificate is.
    CertificateStatus ("certificate status") {
        /// An order is under way with the ACME server (the host serves its last certificate, if any).
        Ordering = "ordering",
        /// Issued; served by every router process until it is renewed.
        Issued = "issued",
        /// The last order failed (the reason is kept); a last certificate still serves until it expires.
        Failed = "failed",
    }
}

vocabulary! {
    /// What a replica did on its own, between deploys.
    ReplicaEventKind ("replica event kind") {
        /// Its process exited; the engine started it again.
        Exited = "exited",
        /// It failed its liveness probe `failureThreshold` times in a row and was restarted.
        LivenessFailed = "liveness_failed",
    }
}

vocabulary! {
    /// Where an add-on is on the deploy target.
    AddonStatus ("add-on status") {
        /// Being started (or converged to new credentials) by an `addon-provision` job.
        Provisioning = "provisioning",
        /// Serving: its services connect with the current credentials.
        Ready = "ready",
        /// Provisioning failed; `detail` says why. Rotating or re-creating tries again.
        Failed = "failed",
    }
}

vocabulary! {
    /// Where an add-on backup is.
    BackupStatus ("backup status") {
        /// Asked for; an `addon-backup` job streams it to the artefact store.
        Running = "running",
        /// Stored in full, with its size and SHA-256: restorable.
        Completed = "completed",
        /// It did not finish; `detail` says why. Nothing restorable was kept.
        Failed = "failed",
    }
}

vocabulary! {
    /// Why an add-on backup was taken.
    BackupTrigger ("backup trigger") {
        /// Asked for by a user (`POST …/backups`).
        Manual = "manual",
        /// The add-on's `backup.schedule` fired.
        Scheduled = "scheduled",
        /// Taken before a forced deletion of the add-on.
        Final = "final",
    }
}
