//! Timetable, the scheduler role: work that no single job owns, done by one scheduler at a time.
//!
//! Every tick (1 s) each scheduler process tries to take or renew the leader lease (`scheduler`,
//! 15 s) in the control-plane database. Only the leader acts, and it stops acting as soon as a
//! renewal fails or its lease could have lapsed:
//!
//! - keeps the cron schedules in step with the Service Specs (when a service changed) and fires
//!   due cron jobs (`job-run`; a fire while the previous run is in progress is recorded as
//!   skipped; missed fires are not replayed — see [`enclii_store::Store::fire_due_cron`]);
//! - enqueues a `cost-sample` for every deployed service every `cost_every` (5 min), keyed by
//!   service and interval so that a second scheduler or a restart never doubles one, then checks
//!   the budgets of environments that have one (warn at 80%, pause non-prod at 100%);
//! - enqueues the teardown of previews idle past `preview_ttl` (72 h);
//! - with HTTPS on, every `certificates_every` (1 min) orders the certificates due: verified
//!   domains without one, renewals `renew_certificates_before` expiry (30 days), and orders that
//!   failed or stalled an hour ago;
//! - prunes finished jobs and job log lines past the retention;
//! - every `reconcile_every` (15 s), reconciles releases with the queue: raises a separate
//!   queue's id sequences above the ids the control plane holds, and builds again (or marks
//!   superseded) releases `building` for longer than `orphan_grace` whose run is missing from the
//!   queue, over, or another release's — what a Redis restart without persistence leaves behind
//!   ([`enclii_store::Store::reconcile_orphans`]; a page of `reconcile_batch` releases a pass);
//!   then, the same way, deployments left `pending` or `running` (or a canary under analysis)
//!   without a live job for longer than `orphan_grace`: a lost deploy job is enqueued again, a
//!   dead or cancelled one fails its deployment with the reason
//!   ([`enclii_store::Store::reconcile_deployments`]; a page of `reconcile_batch` a pass, with a
//!   cursor of its own).
//!
//! Lease rescue is not here: it runs in every worker process, so a worker-only deployment still
//! recovers from crashes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enclii_domain::jobs::CostSample;
use enclii_queue::{Backend, NewJob};
use enclii_store::{BudgetLevel, DeploymentSettlement, Settlement, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The leader lease's name in `leader_leases`.
pub const LEASE: &str = "scheduler";

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Finished (completed, cancelled, dead) jobs and job log lines are deleted this long after.
    pub retention: Duration,
    pub prune_every: Duration,
    /// How often the lease is renewed and due cron jobs are fired.
    pub tick: Duration,
    /// How long the lease lasts without renewal: another scheduler takes over this long after
    /// the leader died. Must be well above `tick`.
    pub lease_ttl: Duration,
    /// A `cost-sample` per deployed service this often (`ENCLII_COST_EVERY_SECONDS`).
    pub cost_every: Duration,
    /// Previews without a release or deployment this long are torn down.
    pub preview_ttl: Duration,
    /// How often expired previews are looked for.
    pub preview_every: Duration,
    /// How often releases are reconciled with the queue.
    pub reconcile_every: Duration,
    /// A release building (or a deployment pending, running or under canary analysis) at least
    /// this long (since it last changed) without a live run (job) is orphaned: the step that ends
    /// a run may record its release a moment after the run ended.
    pub orphan_grace: Duration,
    /// Most building releases (and, apart, unfinished deployments) examined per reconciliation
    /// pass.
    pub reconcile_batch: usize,
    /// With HTTPS on: certificates are (re)ordered this long before they expire, and verified
    /// domains without one are ordered; `None` orders nothing.
    pub renew_certificates_before: Option<Duration>,
    /// How often certificates due an order are looked for.
    pub certificates_every: Duration,
    /// This process's name on the lease; unique per process.
    pub holder: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            prune_every: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            cost_every: Duration::from_secs(300),
            preview_ttl: Duration::from_secs(72 * 3600),
            preview_every: Duration::from_secs(60),
            reconcile_every: Duration::from_secs(15),
            orphan_grace: Duration::from_secs(60),
            reconcile_batch: 50,
            renew_certificates_before: None,
            certificates_every: Duration::from_secs(60),
            holder: default_holder(),
        }
    }
}

/// `<host>-<pid>-<nanos>`: unique per process, and says which process leads.
pub fn default_holder() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into());
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{host}-{}-{nanos:x}", std::process::id())
}

/// One scheduler process: its lease and what it did last. Drive it with [`Scheduler::tick`], or
/// let [`run`] do so.
pub struct Scheduler {
    store: Arc<Store>,
    backend: Arc<dyn Backend>,
    config: SchedulerConfig,
    /// Until when this process may act (from when its last successful renewal was sent).
    leading_until: Option<Instant>,
    services_seen: Option<(i64, i64)>,
    cost_bucket: Option<i64>,
    next_prune: Instant,
    next_preview_check: Instant,
    next_reconcile: Instant,
    next_certificates: Instant,
    /// Where the next reconciliation pass continues.
    reconcile_cursor: i64,
    /// Where the next reconciliation pass over deployments continues.
    deployment_cursor: i64,
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub leading: bool,
    pub cron_queued: usize,
    pub cron_skipped: usize,
    pub cost_samples: usize,
    pub teardowns: usize,
    /// Orphaned releases built again or marked superseded.
    pub orphans: usize,
    /// Orphaned deployments deployed again, failed, superseded or given their analysis again.
    pub orphaned_deployments: usize,
    /// Certificates ordered (new, renewed, or ordered again after a failure).
    pub certificate_orders: usize,
    /// Scheduled add-on backups started.
    pub backups: usize,
}

impl Scheduler {
    pub fn new(store: Arc<Store>, config: SchedulerConfig) -> Self {
        let now = Instant::now();
        Self {
            backend: store.queue(),
            store,
            config,
            leading_until: None,
            services_seen: None,
            cost_bucket: None,
            next_prune: now,
            next_preview_check: now,
            next_reconcile: now,
            next_certificates: now,
            reconcile_cursor: 0,
            deployment_cursor: 0,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading_until.is_some_and(|until| Instant::now() < until)
    }

    /// Renews (or takes) the lease; on failure this process stops acting at once.
    async fn lead(&mut self) -> bool {
        let sent = Instant::now();
        let led = match self
            .store
            .try_lead(LEASE, &self.config.holder, self.config.lease_ttl)
            .await
        {
            Ok(led) => led,
            Err(e) => {
                warn!(error = %e, "cannot renew the scheduler lease; not acting until it can");
                false
            }
        };
        let was = self.leading_until.is_some();
        // Leave a tick's margin before the lease could lapse for the others.
        self.leading_until = led.then(|| sent + self.config.lease_ttl.saturating_sub(self.config.tick));
        if led != was {
            if led {
                info!(holder = %self.config.holder, "this scheduler leads");
                self.services_seen = None;
            } else {
                info!(holder = %self.config.holder, "this scheduler no longer leads");
            }
        }
        metrics::gauge!("enclii_scheduler_leader").set(if led { 1.0 } else { 0.0 });
        led
    }

    /// One round: renew the lease, and act if leading. `now_ms` is the time cron jobs are due by
    /// (the wall clock in [`run`]).
    pub async fn tick(&mut self, now_ms: i64) -> TickReport {
        let mut report = TickReport::default();
        if !self.lead().await {
            return report;
        }
        report.leading = true;
        self.sync_and_fire(now_ms, &mut report).await;
        if self.is_leader() {
            self.fire_backups(now_ms, &mut report).await;
        }
        if self.is_leader() {
            self.sample_costs(now_ms, &mut report).await;
        }
        if self.is_leader() && Instant::now() >= self.next_preview_check {
            self.next_preview_check = Instant::now() + self.config.preview_every;
            self.expire_previews(now_ms, &mut report).await;
        }
        if self.is_leader() && Instant::now() >= self.next_reconcile {
            self.next_reconcile = Instant::now() + self.config.reconcile_every;
            self.reconcile(&mut report).await;
            if self.is_leader() {
                self.reconcile_deployments(&mut report).await;
            }
        }
        if let Some(renew_before) = self.config.renew_certificates_before
            && self.is_leader()
            && Instant::now() >= self.next_certificates
        {
            self.next_certificates = Instant::now() + self.config.certificates_every;
            self.order_certificates(now_ms, renew_before, &mut report).await;
        }
        if self.is_leader() && Instant::now() >= self.next_prune {
            self.next_prune = Instant::now() + self.config.prune_every;
            self.prune().await;
        }
        report
    }

    async fn sync_and_fire(&mut self, now_ms: i64, report: &mut TickReport) {
        match self.store.services_fingerprint().await {
            Ok(seen) if Some(seen) != self.services_seen => match self.store.sync_cron_schedules().await {
                Ok(sync) => {
                    self.services_seen = Some(seen);
                    if sync != Default::default() {
                        info!(
                            added = sync.added,
                            changed = sync.changed,
                            removed = sync.removed,
                            "cron schedules synced"
                        );
                    }
                }
                Err(e) => warn!(error = %e, "cannot sync cron schedules; will try again"),
            },
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the services; will try again"),
        }
        if !self.is_leader() {
            return;
        }
        match self.store.fire_due_cron(now_ms).await {
            Ok(fired) => {
                for fire in fired {
                    metrics::counter!("enclii_cron_runs_total", "outcome" => fire.outcome.as_str()).increment(1);
                    match fire.outcome {
                        enclii_store::CronOutcome::Queued => report.cron_queued += 1,
                        enclii_store::CronOutcome::Skipped => report.cron_skipped += 1,
                        enclii_store::CronOutcome::Paused => {}
                    }
                    info!(project = %fire.project, service = %fire.service, job = %fire.job,
                          outcome = fire.outcome.as_str(), run = fire.run.map(|r| r.id), "cron fired");
                }
            }
            Err(e) => warn!(error = %e, "cannot fire due cron jobs; will try again"),
        }
    }

    /// Once per `cost_every` interval: a `cost-sample` per deployed service (unique per service
    /// and interval), then the budget checks.
    async fn sample_costs(&mut self, now_ms: i64, report: &mut TickReport) {
        let every = self.config.cost_every.as_millis().max(1) as i64;
        let bucket = now_ms.div_euclid(every);
        if self.cost_bucket == Some(bucket) {
            return;
        }
        let services = match self.store.deployed_services().await {
            Ok(services) => services,
            Err(e) => return warn!(error = %e, "cannot list deployed services for cost samples; will try again"),
        };
        let mut jobs = Vec::with_capacity(services.len());
        for s in &services {
            let sample = CostSample {
                service: s.service.clone(),
                environment: s.environment.clone(),
            };
            match NewJob::typed(&s.project, &sample) {
                Ok(job) => jobs.push(job.unique_key(format!(
                    "cost-sample:{}/{}/{}:{bucket}",
                    s.project, s.environment, s.service
                ))),
                Err(e) => warn!(error = %e, "cannot build a cost-sample job"),
            }
        }
        if !self.is_leader() {
            return;
        }
        if !jobs.is_empty() {
            match self.backend.enqueue(jobs).await {
                Ok(enqueued) => {
                    let fresh = enqueued.iter().filter(|e| !e.duplicate).count();
                    metrics::counter!("enclii_cost_samples_enqueued_total").increment(fresh as u64);
                    report.cost_samples = fresh;
                    debug!(fresh, "cost samples enqueued");
                }
                Err(e) => return warn!(error = %e, "cannot enqueue cost samples; will try again"),
            }
        }
        self.cost_bucket = Some(bucket);
        self.check_budgets(now_ms).await;
    }

    async fn check_budgets(&self, now_ms: i64) {
        let environments = match self.store.budgeted_environments().await {
            Ok(environments) => environments,
            Err(e) => return warn!(error = %e, "cannot list budgets; will try again"),
        };
        for env in environments {
            if !self.is_leader() {
                return;
            }
            match self.store.budget_check(&env.project, &env.name, now_ms).await {
                Ok(BudgetLevel::Ok) => {}
                Ok(BudgetLevel::Warn(percent)) => {
                    warn!(project = %env.project, environment = %env.name, percent, "budget at 80% or more this month")
                }
                Ok(BudgetLevel::Exceeded(percent)) => warn!(project = %env.project, environment = %env.name, percent,
                    paused = env.name != "prod", "budget exceeded this month"),
                Err(e) => warn!(error = %e, project = %env.project, environment = %env.name, "budget check failed"),
            }
        }
    }

    /// Starts the add-on backups whose schedule is due (missed fires are not replayed).
    async fn fire_backups(&self, now_ms: i64, report: &mut TickReport) {
        match self.store.fire_due_backups(now_ms).await {
            Ok(started) => {
                report.backups += started.len();
                for backup in started {
                    info!(backup, "scheduled add-on backup started");
                }
            }
            Err(e) => warn!(error = %e, "cannot start the add-on backups due; will try again"),
        }
    }

    /// Orders the certificates due: verified domains without one, renewals, failed orders an
    /// hour on (a renewal that fails keeps the last certificate serving until it expires).
    async fn order_certificates(&self, now_ms: i64, renew_before: Duration, report: &mut TickReport) {
        match self.store.order_due_certificates(now_ms, renew_before, 50).await {
            Ok(hosts) => {
                report.certificate_orders += hosts.len();
                for host in hosts {
                    info!(%host, "certificate ordered");
                }
            }
            Err(e) => warn!(error = %e, "cannot order the certificates due; will try again"),
        }
    }

    async fn expire_previews(&self, now_ms: i64, report: &mut TickReport) {
        let expired = match self.store.expired_previews(self.config.preview_ttl, now_ms).await {
            Ok(expired) => expired,
            Err(e) => return warn!(error = %e, "cannot look for expired previews; will try again"),
        };
        for preview in expired {
            if !self.is_leader() {
                return;
            }
            match self.store.enqueue_preview_teardown(&preview).await {
                Ok(enqueued) if !enqueued.duplicate => {
                    report.teardowns += 1;
                    info!(project = %preview.project, environment = %preview.environment, service = %preview.service,
                          pipeline = enqueued.id, "idle preview expired; teardown enqueued");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, project = %preview.project, environment = %preview.environment,
                                "cannot enqueue a preview's teardown"),
            }
        }
    }

    /// One reconciliation pass; each orphan is logged once, with why and what became of it.
    async fn reconcile(&mut self, report: &mut TickReport) {
        let config = (self.config.orphan_grace, self.config.reconcile_batch);
        let pass = match self
            .store
            .reconcile_orphans(config.0, self.reconcile_cursor, config.1)
            .await
        {
            Ok(pass) => pass,
            Err(e) => return warn!(error = %e, "cannot reconcile releases with the queue; will try again"),
        };
        self.reconcile_cursor = pass.cursor;
        for orphan in &pass.orphans {
            let release = &orphan.release;
            let reason = orphan.reason.to_string();
            let settled = match orphan.settled {
                Settlement::Rebuilt { .. } => "rebuilt",
                Settlement::Superseded { .. } => "superseded",
            };
            metrics::counter!("enclii_orphaned_releases_total", "settled" => settled).increment(1);
            match orphan.settled {
                Settlement::Rebuilt { pipeline } => warn!(release = release.id, project = %release.project,
                    service = %release.service, git_sha = %release.git_sha, old_pipeline = release.pipeline_id,
                    pipeline, %reason, "building release had no live run; built again"),
                Settlement::Superseded { by } => warn!(release = release.id, project = %release.project,
                    service = %release.service, old_pipeline = release.pipeline_id, superseded_by = by, %reason,
                    "building release had no live run; a newer release supersedes it"),
            }
        }
        for (release, error) in &pass.failed {
            warn!(release, %error, "cannot settle a release without a live run; will try again");
        }
        report.orphans += pass.orphans.len();
    }

    /// One reconciliation pass over unfinished deployments; each orphan is logged once, with why
    /// and what became of it.
    async fn reconcile_deployments(&mut self, report: &mut TickReport) {
        let config = (self.config.orphan_grace, self.config.reconcile_batch);
        let pass = match self
            .store
            .reconcile_deployments(config.0, self.deployment_cursor, config.1)
            .await
        {
            Ok(pass) => pass,
            Err(e) => return warn!(error = %e, "cannot reconcile deployments with the queue; will try again"),
        };
        self.deployment_cursor = pass.cursor;
        for orphan in &pass.orphans {
            let deployment = &orphan.deployment;
            let reason = orphan.reason.to_string();
            let settled = match orphan.settled {
                DeploymentSettlement::Redeployed { .. } => "redeployed",
                DeploymentSettlement::Superseded { .. } => "superseded",
                DeploymentSettlement::Failed => "failed",
                DeploymentSettlement::Reanalyzed { .. } => "reanalyzed",
            };
            metrics::counter!("enclii_orphaned_deployments_total", "settled" => settled).increment(1);
            let (project, service, environment) = (&deployment.project, &deployment.service, &deployment.environment);
            match orphan.settled {
                DeploymentSettlement::Redeployed { job } => warn!(deployment = deployment.id, %project, %service,
                    %environment, old_job = deployment.job_id, job, %reason,
                    "unfinished deployment had no live deploy job; deploying it again"),
                DeploymentSettlement::Superseded { by } => warn!(deployment = deployment.id, %project, %service,
                    %environment, old_job = deployment.job_id, superseded_by = by, %reason,
                    "unfinished deployment had no live deploy job; a newer deployment supersedes it"),
                DeploymentSettlement::Failed => warn!(deployment = deployment.id, %project, %service,
                    %environment, job = deployment.job_id, %reason,
                    "unfinished deployment's deploy job ended without it; marked failed"),
                DeploymentSettlement::Reanalyzed { job } => warn!(deployment = deployment.id, %project, %service,
                    %environment, job, %reason, "canary had no analysis of its step; enqueued it again"),
            }
        }
        for (deployment, error) in &pass.failed {
            warn!(deployment, %error, "cannot settle a deployment without a live job; will try again");
        }
        report.orphaned_deployments += pass.orphans.len();
    }

    async fn prune(&self) {
        match prune_once(self.backend.as_ref(), self.config.retention).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "pruned finished jobs"),
            Err(e) => warn!(error = %e, "pruning failed; will try again"),
        }
        // Job logs live in the control plane's database and go with the jobs' retention.
        match self.store.prune_logs(self.config.retention).await {
            Ok(0) => {}
            Ok(lines) => info!(lines, "pruned job log lines past retention"),
            Err(e) => warn!(error = %e, "could not prune job logs"),
        }
        // Replicas' exits and liveness restarts stay a month: the service's history, not job output.
        match self.store.prune_replica_events(Duration::from_secs(30 * 86_400)).await {
            Ok(0) => {}
            Ok(events) => info!(events, "pruned replica events past retention"),
            Err(e) => warn!(error = %e, "could not prune replica events"),
        }
    }

    /// Gives the lease up so that another scheduler can lead at once.
    pub async fn resign(&mut self) {
        if self.leading_until.take().is_some() {
            if let Err(e) = self.store.resign(LEASE, &self.config.holder).await {
                warn!(error = %e, "could not give the scheduler lease up; another scheduler takes over when it expires");
            }
            metrics::gauge!("enclii_scheduler_leader").set(0.0);
        }
    }
}

/// Runs until `shutdown` fires, then gives the lease up.
pub async fn run(store: Arc<Store>, config: SchedulerConfig, shutdown: CancellationToken) {
    info!(holder = %config.holder, tick = ?config.tick, lease = ?config.lease_ttl, cost_every = ?config.cost_every,
          preview_ttl = ?config.preview_ttl, retention = ?config.retention, "scheduler started");
    let tick = config.tick;
    let mut scheduler = Scheduler::new(store, config);
    loop {
        scheduler.tick(chrono::Utc::now().timestamp_millis()).await;
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    scheduler.resign().await;
    info!("scheduler stopped");
}

/// Deletes jobs that finished more than `retention` ago.
pub async fn prune_once(backend: &dyn Backend, retention: Duration) -> enclii_queue::Result<u64> {
    let before = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(1));
    let pruned = backend.prune(before).await?;
    metrics::counter!("enclii_queue_jobs_pruned_total").increment(pruned);
    Ok(pruned)
}
