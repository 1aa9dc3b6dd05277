//! Switchyard's control-plane store: projects, environments, services (from Service Specs),
//! releases, deployments, secrets (sealed), routes, role bindings, API tokens, webhook deliveries
//! and the audit trail — on PostgreSQL or SQLite, in the same database as the Roundhouse queue.
//!
//! Every mutating operation is one transaction that also writes its audit event and, where work
//! follows, enqueues the jobs: a webhook's delivery row, its releases and its pipelines commit
//! together or not at all. (With a Redis queue the jobs are enqueued just before the commit: a
//! worker may claim a step before its rows are visible — build steps wait for their release — and
//! a failed commit can leave a pipeline whose rows are missing, which the unique keys make
//! harmless on GitHub's redelivery. A Redis that lost its data is reconciled: `runs.rs`,
//! `orphans.rs`, `deployment_orphans.rs`.)
//!
//! Each resource has its module: the operations are `async fn`s over one connection type,
//! [`db::Conn`], written once for both databases, and the `Store` methods that run them in a
//! transaction (or on a pooled connection, for reads) sit beside them.

mod addon_backups;
mod addons;
mod audit;
mod certificates;
mod db;
mod deployment_orphans;
mod deployments;
mod domains;
mod error;
#[doc(hidden)]
pub mod fixtures;
mod heads;
mod identity;
mod joblog;
mod lifecycle;
pub mod model;
mod operators;
mod orphans;
mod projects;
mod releases;
mod replica_events;
mod repositories;
mod routes;
mod runs;
mod scrub;
pub mod sealing;
mod secrets;
mod services;
mod timetable;
mod vocabulary;
mod waybill;
mod webhooks;

use std::sync::{Arc, LazyLock};

use enclii_queue::Backend;
use enclii_queue::postgres::PostgresQueue;
use enclii_queue::sqlite::SqliteQueue;
use sqlx::migrate::Migrator;

pub use addon_backups::{AddonBackupRecord, BACKUP_SCHEDULER, BackupOutcome, BackupWork, RestoreRequest, RestoreWork};
pub use addons::{Addon, AddonAccess, NewAddon, PreviewAddons, ProvisionOutcome};
pub use certificates::{ACME_ACTOR, Certificate, OrderOutcome, ServingCertificate};
pub use db::Dialect;
pub use deployment_orphans::{DeploymentOrphan, DeploymentOrphanReason, DeploymentPass, DeploymentSettlement};
pub use deployments::Supersession;
pub use domains::{Domain, DomainCheck, DomainCheckOutcome, NewDomain, check_delay};
pub use error::{Result, StoreError};
pub use joblog::{JobLog, JobLogWriter};
pub use lifecycle::Deletion;
pub use model::*;
pub use operators::*;
pub use orphans::{Orphan, OrphanReason, RECONCILER, ReconcilePass, Settlement};
pub use replica_events::{NewReplicaEvent, ReplicaEvent};
pub use runs::{RECORD_WAIT, RunRelease};
pub use sealing::MasterKey;
pub use timetable::*;
pub use waybill::*;
pub use webhooks::{WebhookAcceptance, WebhookBudget};

/// The control plane's own migrations, tracked apart from the queue's.
fn migrator(mut migrator: Migrator) -> Migrator {
    migrator.dangerous_set_table_name("_switchyard_migrations");
    migrator
}
static PG_MIGRATOR: LazyLock<Migrator> =
    LazyLock::new(|| migrator(sqlx::migrate!("../migrations/switchyard/postgres")));
static SQLITE_MIGRATOR: LazyLock<Migrator> =
    LazyLock::new(|| migrator(sqlx::migrate!("../migrations/switchyard/sqlite")));

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

enum Db {
    Postgres(Arc<PostgresQueue>),
    Sqlite(Arc<SqliteQueue>),
}

pub struct StoreConfig {
    /// `postgres://…` or `sqlite://PATH` (`sqlite::memory:` for throwaway stores).
    pub database_url: String,
    /// A separate queue (`redis://…`); `None` keeps the queue in the database.
    pub queue_url: Option<String>,
    pub max_connections: u32,
    pub master_key: MasterKey,
}

/// The deploy policy's registry check: does the release's image, pinned by digest, carry a
/// signature that verifies? Asked by the API before it accepts a deploy and by the deployer
/// before it runs one; neither knows registries — the binary provides this.
#[async_trait::async_trait]
pub trait SignaturePolicy: Send + Sync {
    /// `Err` says why the image cannot be deployed, for the caller.
    async fn check(&self, release: &Release) -> Result<(), String>;
}

pub struct Store {
    db: Db,
    backend: Arc<dyn Backend>,
    same_database: bool,
    key: MasterKey,
}

impl Store {
    /// Opens (and migrates) the database, and the queue: in the same database unless
    /// `queue_url` names another.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        let queue = match &config.queue_url {
            Some(url) => Some(enclii_queue::open(url, config.max_connections).await?),
            None => None,
        };
        Self::open_with_queue(config, queue).await
    }

    /// [`open`](Self::open) with a separate queue already connected (`None`: the database's
    /// own); `config.queue_url` is not read. Tests give each store a Redis key prefix this way.
    /// A separate queue's id sequences are raised above every pipeline and job id the control
    /// plane holds, so that a queue that lost its data never hands out an id twice.
    pub async fn open_with_queue(config: StoreConfig, queue: Option<Arc<dyn Backend>>) -> Result<Self> {
        let scheme = config.database_url.split(':').next().unwrap_or_default();
        let (db, sql_backend): (Db, Arc<dyn Backend>) = match scheme {
            "postgres" | "postgresql" => {
                let queue = Arc::new(PostgresQueue::connect(&config.database_url, config.max_connections).await?);
                PG_MIGRATOR.run(queue.pool()).await?;
                (Db::Postgres(queue.clone()), queue)
            }
            "sqlite" => {
                let queue = Arc::new(SqliteQueue::connect(&config.database_url).await?);
                SQLITE_MIGRATOR.run(queue.pool()).await?;
                (Db::Sqlite(queue.clone()), queue)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "the control plane needs PostgreSQL or SQLite, not `{other}`; give a postgres:// URL or leave it unset for SQLite"
                )));
            }
        };
        let (backend, same_database) = match queue {
            Some(queue) => (queue, false),
            None => (sql_backend, true),
        };
        let store = Self {
            db,
            backend,
            same_database,
            key: config.master_key,
        };
        if !same_database {
            store.raise_queue_ids().await?;
        }
        let scrubbed = store
            .write(async |conn| scrub::scrub_url_credentials(conn).await)
            .await?;
        if scrubbed > 0 {
            tracing::warn!(
                rows = scrubbed,
                "removed credentials an older version stored in repository URLs; store tokens as the project secret GIT_TOKEN"
            );
        }
        Ok(store)
    }

    /// The job queue (the database's own, or the separate one).
    pub fn queue(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn database_name(&self) -> &'static str {
        match self.db {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        self.read(async |conn| {
            db::query("SELECT 1").execute(conn).await?;
            Ok(())
        })
        .await
    }
}
