//! Waybill: cost samples and reports, monthly budgets and paused environments, and the deployed
//! services `cost-sample` measures.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{audit, change};
use crate::db::{Conn, query, query_as, query_scalar};
use crate::deployments::{create_deployment, current_deployment};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::projects::{get_environment, require_project};
use crate::timetable::*;
use crate::{Store, now_ms};

/// A service's resource usage over one sampling interval, as the `cost-sample` handler measures
/// it, priced with [`Prices::cost_cents`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct NewCostSample {
    pub project: String,
    pub environment: String,
    pub service: String,
    /// End of the interval (epoch ms).
    pub at: i64,
    pub interval_secs: i64,
    pub cpu_seconds: f64,
    pub ram_gib_hours: f64,
    pub volume_gib_hours: f64,
    pub egress_gib: f64,
    pub cost_cents: f64,
    /// The target's cumulative CPU counter at `at` (nanoseconds), for the next sample's difference.
    pub cpu_counter_ns: Option<i64>,
    /// The target's cumulative sent-bytes counter at `at`, for the next sample's difference.
    pub egress_counter_bytes: Option<i64>,
}

impl NewCostSample {
    /// The sample with its cost computed from `prices`.
    pub fn priced(mut self, prices: &Prices) -> Self {
        self.cost_cents = prices.cost_cents(&self);
        self
    }
}

/// A stored cost sample.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct CostSampleRecord {
    pub id: i64,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub sample: NewCostSample,
}

/// Usage and cost of one service in one environment over a report's period.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct CostLine {
    pub environment: String,
    pub service: String,
    pub cpu_seconds: f64,
    pub ram_gib_hours: f64,
    pub volume_gib_hours: f64,
    pub egress_gib: f64,
    pub cost_cents: f64,
    /// Samples summed (one per 5 minutes of a running service by default).
    pub samples: i64,
}

/// What resources cost, in cents. The defaults are in the range of public clouds' on-demand list
/// prices (mid-2020s): a vCPU-hour 4¢, a GiB of memory for an hour 0.5¢, a GiB of block storage
/// for a month 10¢ (≈ 0.0137¢ an hour), a GiB of internet egress 9¢. Showback, not billing: set
/// your own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub cpu_hour_cents: f64,
    pub ram_gib_hour_cents: f64,
    pub volume_gib_hour_cents: f64,
    pub egress_gib_cents: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            cpu_hour_cents: 4.0,
            ram_gib_hour_cents: 0.5,
            volume_gib_hour_cents: 10.0 / 730.0,
            egress_gib_cents: 9.0,
        }
    }
}

impl Prices {
    /// The cost of a sample's usage, in cents.
    pub fn cost_cents(&self, sample: &NewCostSample) -> f64 {
        sample.cpu_seconds / 3600.0 * self.cpu_hour_cents
            + sample.ram_gib_hours * self.ram_gib_hour_cents
            + sample.volume_gib_hours * self.volume_gib_hour_cents
            + sample.egress_gib * self.egress_gib_cents
    }
}

/// A budget level newly reached this month (each is reported once a month); `Ok` otherwise. The
/// number is the month's spend as a percentage of the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetLevel {
    Ok,
    /// 80% or more.
    Warn(f64),
    /// 100% or more: a non-prod environment has been paused.
    Exceeded(f64),
}

/// The last budget level reported for `environments.budget_month`.
pub mod budget_state {
    pub const OK: &str = "ok";
    pub const WARNED: &str = "warned";
    pub const EXCEEDED: &str = "exceeded";

    pub(crate) fn rank(state: &str) -> u8 {
        match state {
            WARNED => 1,
            EXCEEDED => 2,
            _ => 0,
        }
    }
}

/// A service running a release (it has a succeeded deployment) in an environment that is not
/// paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeployedService {
    pub project: String,
    pub environment: String,
    pub service: String,
}

pub(crate) async fn insert_cost_sample(conn: &mut Conn<'_>, s: &NewCostSample) -> Result<CostSampleRecord> {
    query_as::<CostSampleRecord>(
        "INSERT INTO cost_samples (project, environment, service, at, interval_secs, cpu_seconds, ram_gib_hours,
                                   volume_gib_hours, egress_gib, cost_cents, cpu_counter_ns, egress_counter_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
    )
    .binds((
        &s.project,
        &s.environment,
        &s.service,
        s.at,
        s.interval_secs,
        s.cpu_seconds,
        s.ram_gib_hours,
        s.volume_gib_hours,
        s.egress_gib,
        s.cost_cents,
        s.cpu_counter_ns,
        s.egress_counter_bytes,
    ))
    .fetch_one(&mut *conn)
    .await
}

pub(crate) async fn last_cost_sample(conn: &mut Conn<'_>, key: &ServiceKey) -> Result<Option<CostSampleRecord>> {
    let ServiceKey {
        project,
        environment,
        service,
    } = key;
    query_as::<CostSampleRecord>(
        "SELECT * FROM cost_samples WHERE project = $1 AND environment = $2 AND service = $3
         ORDER BY at DESC, id DESC LIMIT 1",
    )
    .binds((project, environment, service))
    .fetch_optional(&mut *conn)
    .await
}

pub(crate) async fn cost_report(conn: &mut Conn<'_>, project: &str, since: i64) -> Result<Vec<CostLine>> {
    require_project(conn, project).await?;
    query_as::<CostLine>(
        "SELECT environment, service, SUM(cpu_seconds) AS cpu_seconds, SUM(ram_gib_hours) AS ram_gib_hours,
                SUM(volume_gib_hours) AS volume_gib_hours, SUM(egress_gib) AS egress_gib,
                SUM(cost_cents) AS cost_cents, COUNT(*) AS samples
         FROM cost_samples WHERE project = $1 AND at >= $2
         GROUP BY environment, service ORDER BY environment, service",
    )
    .binds((project, since))
    .fetch_all(&mut *conn)
    .await
}

pub(crate) async fn environment_spend_cents(
    conn: &mut Conn<'_>,
    project: &str,
    environment: &str,
    since: i64,
) -> Result<f64> {
    query_scalar::<f64>(
        "SELECT COALESCE(SUM(cost_cents), 0.0) FROM cost_samples WHERE project = $1 AND environment = $2 AND at >= $3",
    )
    .binds((project, environment, since))
    .fetch_one(&mut *conn)
    .await
}

pub(crate) async fn budgeted_environments(conn: &mut Conn<'_>) -> Result<Vec<Environment>> {
    query_as::<Environment>(
        "SELECT * FROM environments WHERE budget_cents IS NOT NULL AND budget_cents > 0 ORDER BY project, name",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Compares the month's spend with the budget and reports a level the first time it is reached in
/// the month (`budget_state` remembers the last level reported for `budget_month`). At 100% a
/// non-prod environment is paused, in the same transaction.
pub(crate) async fn budget_check(conn: &mut Conn<'_>, project: &str, name: &str, now: i64) -> Result<BudgetLevel> {
    let environment = get_environment(conn, project, name).await?;
    let Some(budget) = environment.budget_cents.filter(|b| *b > 0) else {
        return Ok(BudgetLevel::Ok);
    };
    let (month, month_start) = month_of(now);
    let spend = environment_spend_cents(conn, project, name, month_start).await?;
    let percent = spend * 100.0 / budget as f64;
    let (level, state) = if percent >= 100.0 {
        (BudgetLevel::Exceeded(percent), budget_state::EXCEEDED)
    } else if percent >= 80.0 {
        (BudgetLevel::Warn(percent), budget_state::WARNED)
    } else {
        (BudgetLevel::Ok, budget_state::OK)
    };
    let (row_month, row_state) = query_as::<(Option<String>, Option<String>)>(
        "SELECT budget_month, budget_state FROM environments WHERE project = $1 AND name = $2",
    )
    .binds((project, name))
    .fetch_one(&mut *conn)
    .await?;
    let reported = match row_month.as_deref() == Some(month.as_str()) {
        true => row_state.as_deref().map_or(0, budget_state::rank),
        false => 0,
    };
    if budget_state::rank(state) <= reported {
        if row_month.as_deref() != Some(month.as_str()) {
            set_budget_state(conn, project, name, &month, budget_state::OK).await?;
        }
        return Ok(BudgetLevel::Ok);
    }
    set_budget_state(conn, project, name, &month, state).await?;
    let entity = format!("{project}/{name}");
    let mut diff = json!({"month": month, "spend_cents": spend, "budget_cents": budget, "percent": percent});
    if let BudgetLevel::Exceeded(_) = level
        && name != "prod"
        && environment.paused_at.is_none()
    {
        pause(conn, project, name, now).await?;
        diff["paused"] = json!(true);
    }
    let action = if state == budget_state::EXCEEDED {
        "budget.exceeded"
    } else {
        "budget.warn"
    };
    audit(
        conn,
        "scheduler",
        change(action, "environment", &entity, Some(project), diff),
    )
    .await?;
    Ok(level)
}

pub(crate) async fn set_budget_state(
    conn: &mut Conn<'_>,
    project: &str,
    name: &str,
    month: &str,
    state: &str,
) -> Result<()> {
    query("UPDATE environments SET budget_month = $3, budget_state = $4 WHERE project = $1 AND name = $2")
        .binds((project, name, month, state))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(crate) async fn pause(conn: &mut Conn<'_>, project: &str, name: &str, now: i64) -> Result<Environment> {
    query_as::<Environment>(
        "UPDATE environments SET paused_at = COALESCE(paused_at, $3) WHERE project = $1 AND name = $2 RETURNING *",
    )
    .binds((project, name, now))
    .fetch_one(&mut *conn)
    .await
}

pub(crate) async fn pause_environment(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
    now: i64,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    if name == "prod" {
        return Err(StoreError::Invalid(format!(
            "environment `prod` of project `{project}` cannot be paused; raise its budget or scale its services instead"
        )));
    }
    let environment = pause(conn, project, name, now).await?;
    if before.paused_at.is_none() {
        let entity = format!("{project}/{name}");
        audit(
            conn,
            actor,
            change("environment.pause", "environment", &entity, Some(project), json!({})),
        )
        .await?;
    }
    Ok(environment)
}

/// Lifts a pause and starts the environment's services again: each service's current release is
/// redeployed (a deployment with reason `resume`, in this transaction).
pub(crate) async fn resume_environment(
    conn: &mut Conn<'_>,
    actor: &str,
    project: &str,
    name: &str,
) -> Result<Environment> {
    let before = get_environment(conn, project, name).await?;
    let environment = query_as::<Environment>(
        "UPDATE environments SET paused_at = NULL WHERE project = $1 AND name = $2 RETURNING *",
    )
    .binds((project, name))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(paused_at) = before.paused_at {
        let entity = format!("{project}/{name}");
        let diff = json!({"paused_at": {"from": paused_at, "to": null}});
        audit(
            conn,
            actor,
            change("environment.resume", "environment", &entity, Some(project), diff),
        )
        .await?;
        let services: Vec<String> = query_scalar(
            "SELECT DISTINCT service FROM deployments WHERE project = $1 AND environment = $2 AND status = 'succeeded'",
        )
        .binds((project, name))
        .fetch_all(&mut *conn)
        .await?;
        for service in services {
            if let Some(current) = current_deployment(conn, &ServiceKey::new(project, name, &service)).await? {
                let request = DeploymentRequest {
                    project: project.to_string(),
                    service,
                    environment: name.to_string(),
                    release_id: current.release_id,
                    strategy: Strategy::Rolling,
                    reason: "resume".into(),
                };
                create_deployment(conn, actor, &request).await?;
            }
        }
    }
    Ok(environment)
}

pub(crate) async fn deployed_services(conn: &mut Conn<'_>) -> Result<Vec<DeployedService>> {
    query_as::<DeployedService>(
        "SELECT DISTINCT d.project, d.environment, d.service
         FROM deployments d
         JOIN services s ON s.project = d.project AND s.name = d.service
         JOIN environments e ON e.project = d.project AND e.name = d.environment
         WHERE d.status = 'succeeded' AND e.paused_at IS NULL
         ORDER BY d.project, d.environment, d.service",
    )
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    pub async fn insert_cost_sample(&self, sample: &NewCostSample) -> Result<CostSampleRecord> {
        self.write(async |conn| insert_cost_sample(conn, sample).await).await
    }
    /// The newest sample of a service in an environment (its CPU counter is where the next
    /// sample's difference starts).
    pub async fn last_cost_sample(&self, key: &ServiceKey) -> Result<Option<CostSampleRecord>> {
        self.read(async |conn| last_cost_sample(conn, key).await).await
    }
    /// Usage and cost per environment and service of samples taken at or after `since_ms`.
    pub async fn cost_report(&self, project: &str, since_ms: i64) -> Result<Vec<CostLine>> {
        self.read(async |conn| cost_report(conn, project, since_ms).await).await
    }
    /// What an environment's samples since `month_start_ms` cost, in cents.
    pub async fn environment_spend_cents(&self, project: &str, environment: &str, month_start_ms: i64) -> Result<f64> {
        self.read(async |conn| environment_spend_cents(conn, project, environment, month_start_ms).await)
            .await
    }
    /// Environments with a budget, for the scheduler's budget checks.
    pub async fn budgeted_environments(&self) -> Result<Vec<Environment>> {
        self.read(async |conn| budgeted_environments(conn).await).await
    }
    /// Checks the month's spend (of `now_ms`'s month, UTC) against the environment's budget.
    /// Returns a level the first time it is reached in the month — audited `budget.warn` at 80%,
    /// `budget.exceeded` at 100%, when a non-prod environment is also paused — and `Ok` otherwise.
    pub async fn budget_check(&self, project: &str, environment: &str, now_ms: i64) -> Result<BudgetLevel> {
        self.write(async |conn| budget_check(conn, project, environment, now_ms).await)
            .await
    }
    /// Pauses an environment: no cron runs, one-off runs or cost samples until it is resumed.
    /// `prod` is never paused.
    pub async fn pause_environment(&self, actor: &str, project: &str, environment: &str) -> Result<Environment> {
        self.write(async |conn| pause_environment(conn, actor, project, environment, now_ms()).await)
            .await
    }
    /// Lifts a budget pause and redeploys the environment's current releases; the budget is not
    /// reported again until its next level (or month).
    pub async fn resume_environment(&self, actor: &str, project: &str, environment: &str) -> Result<Environment> {
        self.write(async |conn| resume_environment(conn, actor, project, environment).await)
            .await
    }
    /// `(project, environment, service)` of every service with a succeeded deployment in an
    /// environment that is not paused: what `cost-sample` measures.
    pub async fn deployed_services(&self) -> Result<Vec<DeployedService>> {
        self.read(async |conn| deployed_services(conn).await).await
    }
}
