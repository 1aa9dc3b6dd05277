//! Timetable and Waybill resources: one-off runs of a service's jobs and the run history, the cost
//! report, and resuming a paused environment. Each handler authorises the caller for one
//! permission on one project, validates, and makes one store call.

use crate::extract::{Path, Query};
use crate::views;
use crate::views::{CostLine, Environment, JobRunRecord};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Permission, Principal};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

fn invalid(path: &str, message: impl Into<String>, hint: &str) -> ApiError {
    let message = message.into();
    ApiError::invalid(
        format!("{path}: {message}"),
        hint,
        vec![FieldError {
            path: path.to_string(),
            message,
        }],
    )
}

// --- job runs -----------------------------------------------------------------------------------

/// Runs one of the service's jobs (`spec.jobs`) now, in the service's environment. The run is
/// queued like a cron run (same retry policy, logs in the job's log stream).
#[utoipa::path(post, path = "/v1/projects/{project}/services/{service}/jobs/{job}/runs", tag = "jobs",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name"),
           ("job" = String, Path, description = "Job name in the Service Spec (`spec.jobs`)")),
    responses((status = 202, body = JobRunRecord), (status = 404, body = crate::Problem, description = "no such service or job"),
              (status = 409, body = crate::Problem, description = "the environment is paused")))]
pub async fn run_job(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service, job)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<JobRunRecord>), ApiError> {
    principal.require(Permission::Deploy, Some(&project))?;
    let run = state
        .store
        .run_job_now(&principal.subject, &project, &service, &job)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this job's runs.
    job: Option<String>,
    /// At most this many (default 50).
    limit: Option<i64>,
}

/// The service's job runs (cron and one-off), newest first.
#[utoipa::path(get, path = "/v1/projects/{project}/services/{service}/jobs/runs", tag = "jobs",
    params(("project" = String, Path, description = "Project slug"),
           ("service" = String, Path, description = "Service name"),
           RunsQuery),
    responses((status = 200, body = [JobRunRecord])))]
pub async fn list_job_runs(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, service)): Path<(String, String)>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<JobRunRecord>>, ApiError> {
    principal.require(Permission::Read, Some(&project))?;
    let runs = state
        .store
        .list_job_runs(&project, &service, query.job.as_deref(), query.limit.unwrap_or(50))
        .await?;
    Ok(Json(views::all(runs)))
}

// --- cost ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// The project to report on.
    project: Option<String>,
    /// Start of the period: `30d`, `12h`, `90m` ago, or an RFC 3339 time. Default `30d`.
    since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CostReport {
    project: String,
    /// Start of the period (epoch ms).
    since: i64,
    /// Usage and cost per environment and service.
    lines: Vec<CostLine>,
    /// Sum of the lines' costs, in cents.
    total_cents: f64,
}

/// Parses `30d`, `12h`, `90m` (ago from `now`) or an RFC 3339 time into epoch ms.
fn parse_since(text: &str, now: DateTime<Utc>) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    let (digits, unit_ms): (&str, i64) = match text.char_indices().last() {
        Some((i, 'd')) => (&text[..i], 86_400_000),
        Some((i, 'h')) => (&text[..i], 3_600_000),
        Some((i, 'm')) => (&text[..i], 60_000),
        _ => ("", 0),
    };
    let amount = digits.parse::<i64>().ok();
    match amount {
        Some(n) if unit_ms > 0 && (1..=3650 * 86_400_000 / unit_ms).contains(&n) => {
            Ok(now.timestamp_millis() - n * unit_ms)
        }
        _ => Err(format!(
            "must be a duration ago such as `30d`, `12h` or `90m` (at most 10 years), or an RFC 3339 time such as `2026-01-31T00:00:00Z` (got {text:?})"
        )),
    }
}

/// What a project's services used and cost since a time, per environment and service (showback:
/// prices are the platform's, see `Prices`).
#[utoipa::path(get, path = "/v1/cost", tag = "cost", params(CostQuery),
    responses((status = 200, body = CostReport), (status = 422, body = crate::Problem)))]
pub async fn cost_report(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let Some(project) = query.project else {
        return Err(invalid(
            "project",
            "is required",
            "name the project: GET /v1/cost?project=<slug>&since=30d",
        ));
    };
    principal.require(Permission::Read, Some(&project))?;
    let since = parse_since(query.since.as_deref().unwrap_or("30d"), Utc::now())
        .map_err(|message| invalid("since", message, "fix `since` and ask again"))?;
    let lines = state.store.cost_report(&project, since).await?;
    let total_cents = lines.iter().map(|l| l.cost_cents).sum();
    Ok(Json(CostReport {
        project,
        since,
        lines: views::all(lines),
        total_cents,
    }))
}

// --- paused environments ------------------------------------------------------------------------

/// Resumes an environment paused by its budget (or by hand): cron and one-off runs and cost
/// samples start again. The month's budget level is not reported again.
#[utoipa::path(post, path = "/v1/projects/{project}/environments/{environment}/resume", tag = "environments",
    params(("project" = String, Path, description = "Project slug"),
           ("environment" = String, Path, description = "Environment name")),
    responses((status = 200, body = Environment)))]
pub async fn resume_environment(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Json<Environment>, ApiError> {
    principal.require(Permission::Govern, Some(&project))?;
    Ok(Json(
        state
            .store
            .resume_environment(&principal.subject, &project, &environment)
            .await?
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_ago_and_rfc3339_times() {
        let now = DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z").unwrap().to_utc();
        let ms = now.timestamp_millis();
        assert_eq!(parse_since("30d", now), Ok(ms - 30 * 86_400_000));
        assert_eq!(parse_since("12h", now), Ok(ms - 12 * 3_600_000));
        assert_eq!(parse_since("90m", now), Ok(ms - 90 * 60_000));
        assert_eq!(
            parse_since("2026-03-01T00:00:00Z", now),
            Ok(ms - (30 * 24 + 12) * 3_600_000)
        );
        for bad in [
            "",
            "d",
            "30",
            "30s",
            "30é",
            "-1d",
            "0h",
            "tomorrow",
            "99999d",
            "2026-13-01T00:00:00Z",
        ] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("`30d`"), "{bad}: {err}");
        }
    }
}
