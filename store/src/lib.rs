//! Switchyard's control-plane store: projects, environments, services (from Service Specs),
//! releases, deployments, secrets (sealed), routes, role bindings, API tokens, webhook deliveries
//! and the audit trail — on PostgreSQL or SQLite, in the same database as the Roundhouse queue.
//!
//! Every mutating operation is one transaction that also writes its audit event and, where work
//! follows, enqueues the jobs: a webhook's delivery row, its releases and its pipelines commit
//! together or not at all. (With a Redis queue the jobs are enqueued just before the commit; a
//! failed commit can leave a pipeline whose rows are missing, which the unique keys make harmless
//! on GitHub's redelivery.)
//!
//! The operations live in `ops.rs`, compiled once per database (module `pg` and module `lite`)
//! because sqlx connections are concrete types; the SQL is the portable subset of both.

mod error;
mod joblog;
pub mod model;
pub mod sealing;

use std::sync::{Arc, LazyLock};

use enclii_queue::postgres::PostgresQueue;
use enclii_queue::sqlite::SqliteQueue;
use enclii_queue::{Backend, PipelineEnqueued};
use sqlx::migrate::Migrator;

pub use error::{Result, StoreError};
pub use joblog::{JobLog, JobLogWriter};
pub use model::*;
pub use sealing::MasterKey;

#[allow(clippy::duplicate_mod)]
mod pg {
    type Conn = sqlx::PgConnection;
    type Queue = enclii_queue::postgres::PostgresQueue;
    include!("ops.rs");

    /// Timetable and Waybill operations (see `timetable.rs`), beside the operations they reuse.
    pub mod tt {
        include!("timetable_ops.rs");
    }

    /// Two api processes starting together must not both bootstrap an administrator.
    pub async fn serialise_bootstrap(conn: &mut Conn) -> Result<()> {
        sqlx::query("LOCK TABLE role_bindings IN EXCLUSIVE MODE")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[allow(clippy::duplicate_mod)]
mod lite {
    type Conn = sqlx::SqliteConnection;
    type Queue = enclii_queue::sqlite::SqliteQueue;
    include!("ops.rs");

    /// Timetable and Waybill operations (see `timetable.rs`), beside the operations they reuse.
    pub mod tt {
        include!("timetable_ops.rs");
    }

    /// `BEGIN IMMEDIATE` already serialises writers on SQLite.
    pub async fn serialise_bootstrap(_conn: &mut Conn) -> Result<()> {
        Ok(())
    }
}

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

/// Runs `$body` in a write transaction with `$conn` the connection, `$ops` the operations module
/// for this database and `$jobs` the enqueuer; commits when the body returns `Ok`.
macro_rules! write {
    ($store:expr, |$conn:ident, $ops:ident, $jobs:ident| $body:expr) => {{
        let store: &Store = $store;
        match &store.db {
            Db::Postgres(queue) => {
                let mut tx = queue.pool().begin().await?;
                let $jobs = pg::Jobs {
                    queue,
                    same_database: store.same_database,
                    backend: store.backend.as_ref(),
                };
                let out = {
                    #[allow(unused_imports)]
                    use pg as $ops;
                    let $conn: &mut sqlx::PgConnection = &mut tx;
                    let _ = &$jobs;
                    $body
                };
                if out.is_ok() {
                    tx.commit().await?;
                }
                out
            }
            Db::Sqlite(queue) => {
                let (_writer, mut tx) = queue.begin_write().await?;
                let $jobs = lite::Jobs {
                    queue,
                    same_database: store.same_database,
                    backend: store.backend.as_ref(),
                };
                let out = {
                    #[allow(unused_imports)]
                    use lite as $ops;
                    let $conn: &mut sqlx::SqliteConnection = &mut tx;
                    let _ = &$jobs;
                    $body
                };
                if out.is_ok() {
                    tx.commit().await?;
                }
                out
            }
        }
    }};
}

/// Runs `$body` on a pooled connection, outside any transaction.
macro_rules! read {
    ($store:expr, |$conn:ident, $ops:ident| $body:expr) => {{
        match &$store.db {
            Db::Postgres(queue) => {
                let mut connection = queue.pool().acquire().await?;
                #[allow(unused_imports)]
                use pg as $ops;
                let $conn: &mut sqlx::PgConnection = &mut connection;
                $body
            }
            Db::Sqlite(queue) => {
                let mut connection = queue.pool().acquire().await?;
                #[allow(unused_imports)]
                use lite as $ops;
                let $conn: &mut sqlx::SqliteConnection = &mut connection;
                $body
            }
        }
    }};
}

// Timetable and Waybill (cron and one-off jobs, cost, budgets); uses the macros above.
mod timetable;
pub use timetable::*;
// Queue controls and worker heartbeats, for operators; uses the macros above.
mod operators;
pub use operators::*;

impl Store {
    /// Opens (and migrates) the database, and the queue: in the same database unless
    /// `queue_url` names another.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        let scheme = config.database_url.split(':').next().unwrap_or_default();
        let (db, sql_backend): (Db, Arc<dyn Backend>) = match scheme {
            "postgres" | "postgresql" => {
                let queue = Arc::new(PostgresQueue::connect(&config.database_url, config.max_connections).await?);
                PG_MIGRATOR.run(queue.pool()).await.map_err(migration_failed)?;
                (Db::Postgres(queue.clone()), queue)
            }
            "sqlite" => {
                let queue = Arc::new(SqliteQueue::connect(&config.database_url).await?);
                SQLITE_MIGRATOR.run(queue.pool()).await.map_err(migration_failed)?;
                (Db::Sqlite(queue.clone()), queue)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "the control plane needs PostgreSQL or SQLite, not `{other}`; give a postgres:// URL or leave it unset for SQLite"
                )));
            }
        };
        let (backend, same_database) = match &config.queue_url {
            Some(url) => (enclii_queue::open(url, config.max_connections).await?, false),
            None => (sql_backend, true),
        };
        Ok(Self {
            db,
            backend,
            same_database,
            key: config.master_key,
        })
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
        read!(self, |conn, _ops| {
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            Ok(())
        })
    }

    // --- projects and environments ----------------------------------------------------------

    pub async fn create_project(&self, actor: &str, slug: &str, name: &str) -> Result<Project> {
        write!(self, |conn, ops, _jobs| ops::create_project(conn, actor, slug, name)
            .await)
    }
    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        read!(self, |conn, ops| ops::list_projects(conn).await)
    }
    pub async fn project(&self, slug: &str) -> Result<Project> {
        read!(self, |conn, ops| ops::require_project(conn, slug).await)
    }
    pub async fn rename_project(&self, actor: &str, slug: &str, name: &str) -> Result<Project> {
        write!(self, |conn, ops, _jobs| ops::rename_project(conn, actor, slug, name)
            .await)
    }
    pub async fn delete_project(&self, actor: &str, slug: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::delete_project(conn, actor, slug).await)
    }
    pub async fn create_environment(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        settings: &EnvironmentChange,
    ) -> Result<Environment> {
        write!(self, |conn, ops, _jobs| ops::create_environment(
            conn, actor, project, name, settings
        )
        .await)
    }
    pub async fn update_environment(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        settings: &EnvironmentChange,
    ) -> Result<Environment> {
        write!(self, |conn, ops, _jobs| ops::update_environment(
            conn, actor, project, name, settings
        )
        .await)
    }
    pub async fn environment(&self, project: &str, name: &str) -> Result<Environment> {
        read!(self, |conn, ops| ops::get_environment(conn, project, name).await)
    }
    pub async fn list_environments(&self, project: &str) -> Result<Vec<Environment>> {
        read!(self, |conn, ops| ops::list_environments(conn, project).await)
    }

    // --- services ---------------------------------------------------------------------------

    /// Creates or updates a service; `routes` are the spec's (host, path) pairs. Returns the
    /// service and whether it was created.
    pub async fn apply_service(
        &self,
        actor: &str,
        draft: &ServiceDraft,
        routes: &[(String, String)],
    ) -> Result<(Service, bool)> {
        write!(self, |conn, ops, _jobs| ops::apply_service(conn, actor, draft, routes)
            .await)
    }
    pub async fn service(&self, project: &str, name: &str) -> Result<Service> {
        read!(self, |conn, ops| ops::require_service(conn, project, name).await)
    }
    pub async fn list_services(&self, project: &str) -> Result<Vec<Service>> {
        read!(self, |conn, ops| ops::list_services(conn, project).await)
    }
    pub async fn spec_versions(&self, project: &str, name: &str) -> Result<Vec<SpecVersion>> {
        read!(self, |conn, ops| ops::spec_versions(conn, project, name).await)
    }
    pub async fn delete_service(&self, actor: &str, project: &str, name: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::delete_service(conn, actor, project, name)
            .await)
    }
    /// The projects whose services build from a repository (by [`repository_key`](enclii_domain::pipeline::repository_key)).
    pub async fn projects_for_repository(&self, repository: &str) -> Result<Vec<String>> {
        let services = read!(self, |conn, ops| ops::services_for_repository(conn, repository).await)?;
        let mut projects: Vec<String> = services.into_iter().map(|s| s.project).collect();
        projects.dedup();
        Ok(projects)
    }

    // --- releases and deployments -----------------------------------------------------------

    pub async fn trigger_build(&self, actor: &str, trigger: &BuildTrigger) -> Result<(Release, PipelineEnqueued)> {
        write!(self, |conn, ops, jobs| ops::trigger_build(conn, &jobs, actor, trigger)
            .await)
    }
    pub async fn release(&self, id: i64) -> Result<Release> {
        read!(self, |conn, ops| ops::get_release(conn, id).await)
    }
    pub async fn list_releases(&self, project: &str, service: Option<&str>, limit: i64) -> Result<Vec<Release>> {
        match service {
            Some(service) => read!(self, |conn, ops| ops::list_releases(conn, project, service, limit)
                .await),
            None => read!(self, |conn, ops| ops::list_project_releases(conn, project, limit).await),
        }
    }
    /// Records how a release's pipeline ended; a finished release never changes again.
    pub async fn finish_release(&self, id: i64, outcome: &ReleaseOutcome) -> Result<Release> {
        write!(self, |conn, ops, _jobs| ops::finish_release(conn, id, outcome).await)
    }
    pub async fn release_for_pipeline(&self, pipeline_id: i64) -> Result<Release> {
        read!(self, |conn, ops| ops::release_for_pipeline(conn, pipeline_id).await)
    }
    pub async fn start_release_step(&self, release_id: i64, step: &str, job_id: i64, attempt: i32) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::start_release_step(
            conn, release_id, step, job_id, attempt
        )
        .await)
    }
    /// Ends a step as started by `attempt` (job id, attempt number), with its artefact; see
    /// [`StepEnd`].
    pub async fn finish_release_step(&self, release_id: i64, attempt: (i64, i32), end: &StepEnd<'_>) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::finish_release_step(
            conn, release_id, attempt, end
        )
        .await)
    }
    pub async fn release_steps(&self, release_id: i64) -> Result<Vec<ReleaseStep>> {
        read!(self, |conn, ops| ops::release_steps(conn, release_id).await)
    }
    pub async fn last_log_seq(&self, job_id: i64) -> Result<i64> {
        read!(self, |conn, ops| ops::last_log_seq(conn, job_id).await)
    }
    pub async fn append_log(&self, lines: &[LogLine]) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::append_log(conn, lines).await)
    }
    /// Deletes job log lines older than `age` (the job retention); the archived copies stay in S3.
    pub async fn prune_logs(&self, age: std::time::Duration) -> Result<u64> {
        let cutoff = now_ms() - age.as_millis() as i64;
        write!(self, |conn, ops, _jobs| ops::prune_logs(conn, cutoff).await)
    }
    pub async fn read_log(&self, job_id: i64, after_seq: i64, limit: i64) -> Result<Vec<LogLine>> {
        read!(self, |conn, ops| ops::read_log(conn, job_id, after_seq, limit).await)
    }
    pub async fn create_deployment(&self, actor: &str, request: &DeploymentRequest) -> Result<Deployment> {
        write!(self, |conn, ops, jobs| ops::create_deployment(
            conn, &jobs, actor, request
        )
        .await)
    }
    pub async fn deployment(&self, id: i64) -> Result<Deployment> {
        read!(self, |conn, ops| ops::get_deployment(conn, id).await)
    }
    pub async fn list_deployments(&self, project: &str, service: Option<&str>, limit: i64) -> Result<Vec<Deployment>> {
        read!(self, |conn, ops| ops::list_deployments(conn, project, service, limit)
            .await)
    }

    /// The deployment a pipeline's deploy job works on (created by its first attempt).
    pub async fn pipeline_deployment(
        &self,
        job_id: i64,
        project: &str,
        deploy: &enclii_domain::jobs::Deploy,
        strategy: &str,
    ) -> Result<Deployment> {
        write!(self, |conn, ops, _jobs| ops::pipeline_deployment(
            conn, job_id, project, deploy, strategy
        )
        .await)
    }
    /// Records a deployment's progress, and enqueues `then` (its next step) in the same
    /// transaction; refused once the deployment has ended.
    pub async fn update_deployment(
        &self,
        actor: &str,
        id: i64,
        update: &DeploymentUpdate<'_>,
        then: Option<enclii_queue::NewJob>,
    ) -> Result<Deployment> {
        write!(self, |conn, ops, jobs| {
            let deployment = ops::update_deployment(conn, actor, id, update).await?;
            if let Some(job) = then {
                jobs.job(conn, job).await?;
            }
            Ok(deployment)
        })
    }
    /// Marks the service's other unfinished deployments in the environment superseded.
    pub async fn supersede_deployments(&self, by: &Deployment) -> Result<Vec<i64>> {
        write!(self, |conn, ops, _jobs| ops::supersede_deployments(conn, by).await)
    }
    /// The deployment serving the service in the environment now, if any.
    pub async fn current_deployment(
        &self,
        project: &str,
        environment: &str,
        service: &str,
    ) -> Result<Option<Deployment>> {
        read!(self, |conn, ops| ops::current_deployment(
            conn,
            project,
            environment,
            service
        )
        .await)
    }
    pub async fn service_routes(&self, project: &str, environment: &str, service: &str) -> Result<Vec<Route>> {
        read!(self, |conn, ops| ops::service_routes(
            conn,
            project,
            environment,
            service
        )
        .await)
    }
    pub async fn bind_preview_route(
        &self,
        project: &str,
        environment: &str,
        service: &str,
        host: &str,
    ) -> Result<Route> {
        write!(self, |conn, ops, _jobs| ops::bind_preview_route(
            conn,
            project,
            environment,
            service,
            host
        )
        .await)
    }
    /// The secret values a service reads in an environment (narrowest scope wins), for the
    /// deployer that injects them. The API never calls this.
    pub async fn service_secrets(
        &self,
        project: &str,
        environment: &str,
        service: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let key = &self.key;
        read!(self, |conn, ops| ops::service_secrets(
            conn,
            key,
            project,
            environment,
            service
        )
        .await)
    }
    /// Forgets what a torn-down preview held for one service (and the environment once empty).
    pub async fn forget_preview(&self, actor: &str, project: &str, environment: &str, service: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::forget_preview(
            conn,
            actor,
            project,
            environment,
            service
        )
        .await)
    }

    // --- secrets ----------------------------------------------------------------------------

    pub async fn set_secret(&self, actor: &str, scope: &SecretScope, name: &str, value: &[u8]) -> Result<SecretMeta> {
        let key = &self.key;
        write!(self, |conn, ops, _jobs| ops::set_secret(
            conn, key, actor, scope, name, value
        )
        .await)
    }
    pub async fn delete_secret(&self, actor: &str, scope: &SecretScope, name: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::delete_secret(conn, actor, scope, name)
            .await)
    }
    pub async fn list_secrets(
        &self,
        project: &str,
        environment: Option<&str>,
        service: Option<&str>,
    ) -> Result<Vec<SecretMeta>> {
        read!(self, |conn, ops| ops::list_secrets(conn, project, environment, service)
            .await)
    }
    /// The current value of a secret, for the workers that inject it. The API never calls this.
    pub async fn reveal_secret(&self, scope: &SecretScope, name: &str) -> Result<Option<Vec<u8>>> {
        let key = &self.key;
        read!(self, |conn, ops| ops::reveal_secret(conn, key, scope, name).await)
    }

    // --- routes -----------------------------------------------------------------------------

    pub async fn add_route(&self, actor: &str, route: &NewRoute) -> Result<Route> {
        write!(self, |conn, ops, _jobs| ops::add_route(conn, actor, route).await)
    }
    pub async fn list_routes(&self, project: &str) -> Result<Vec<Route>> {
        read!(self, |conn, ops| ops::list_routes(conn, project).await)
    }
    pub async fn delete_route(&self, actor: &str, project: &str, id: i64) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::delete_route(conn, actor, project, id)
            .await)
    }

    // --- identity ---------------------------------------------------------------------------

    pub async fn bind_role(&self, actor: &str, subject: &str, project: &str, role: &str) -> Result<RoleBinding> {
        write!(self, |conn, ops, _jobs| ops::bind_role(
            conn, actor, subject, project, role
        )
        .await)
    }
    pub async fn unbind_role(&self, actor: &str, subject: &str, project: &str) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::unbind_role(conn, actor, subject, project)
            .await)
    }
    pub async fn roles_of(&self, subject: &str) -> Result<Vec<RoleBinding>> {
        read!(self, |conn, ops| ops::roles_of(conn, subject).await)
    }
    pub async fn role_bindings(&self, project: &str) -> Result<Vec<RoleBinding>> {
        read!(self, |conn, ops| ops::role_bindings(conn, project).await)
    }
    /// Creates the first administrator if nobody holds any role yet; `false` when someone does.
    pub async fn bootstrap(&self, subject: &str, owner_role: &str, token: &TokenRecord) -> Result<bool> {
        write!(self, |conn, ops, _jobs| {
            ops::serialise_bootstrap(conn).await?;
            if ops::count_role_bindings(conn).await? > 0 {
                Ok(false)
            } else {
                ops::bind_role(conn, "bootstrap", subject, "*", owner_role).await?;
                ops::insert_token(conn, "bootstrap", token).await?;
                Ok(true)
            }
        })
    }
    pub async fn insert_token(&self, actor: &str, token: &TokenRecord) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::insert_token(conn, actor, token).await)
    }
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        read!(self, |conn, ops| ops::find_token(conn, id).await)
    }
    pub async fn list_tokens(&self, subject: &str) -> Result<Vec<TokenRecord>> {
        read!(self, |conn, ops| ops::list_tokens(conn, subject).await)
    }
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<TokenRecord> {
        write!(self, |conn, ops, _jobs| ops::revoke_token(conn, actor, id).await)
    }

    // --- webhooks and audit -----------------------------------------------------------------

    pub async fn accept_webhook(&self, delivery: &WebhookDelivery) -> Result<WebhookOutcome> {
        write!(self, |conn, ops, jobs| ops::accept_webhook(conn, &jobs, delivery).await)
    }
    pub async fn delivery(&self, id: &str) -> Result<Delivery> {
        read!(self, |conn, ops| ops::get_delivery(conn, id).await)
    }
    pub async fn list_deliveries(&self, project: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
        read!(self, |conn, ops| ops::list_deliveries(conn, project, limit).await)
    }
    /// Audits an action whose effect lives elsewhere (the queue: cancel, retry, limits).
    pub async fn audit(&self, actor: &str, change: Change<'_>) -> Result<()> {
        write!(self, |conn, ops, _jobs| ops::audit(conn, actor, change).await)
    }
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        read!(self, |conn, ops| ops::list_audit(conn, filter).await)
    }
}

fn migration_failed(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Database(format!("control-plane migration failed: {e}"))
}
