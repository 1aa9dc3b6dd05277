//! Idle previews the scheduler tears down.

use std::time::Duration;

use serde_json::json;

use crate::Store;
use crate::audit::{audit, change};
use crate::db::{Conn, query_as};
use crate::error::Result;
use crate::model::*;
use crate::releases::mark_superseded;
use crate::timetable::*;
use enclii_domain::pipeline::preview_teardown;
use enclii_queue::PipelineEnqueued;

#[derive(sqlx::FromRow)]
pub(crate) struct PreviewActivity {
    project: String,
    name: String,
    created_at: i64,
    released_at: Option<i64>,
    deployed_at: Option<i64>,
}

/// Preview environments with no release or deployment activity since `cutoff`, one entry per
/// service released there (its latest release names the repository and branch).
pub(crate) async fn expired_previews(conn: &mut Conn<'_>, cutoff: i64) -> Result<Vec<ExpiredPreview>> {
    let previews = query_as::<PreviewActivity>(
        "SELECT e.project, e.name, e.created_at,
                (SELECT MAX(r.updated_at) FROM releases r WHERE r.project = e.project AND r.environment = e.name)
                    AS released_at,
                (SELECT MAX(d.updated_at) FROM deployments d WHERE d.project = e.project AND d.environment = e.name)
                    AS deployed_at
         FROM environments e WHERE e.name LIKE 'preview-%' ORDER BY e.project, e.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut expired = Vec::new();
    for preview in previews {
        let last_activity = preview
            .created_at
            .max(preview.released_at.unwrap_or(0))
            .max(preview.deployed_at.unwrap_or(0));
        let Some(number) = preview
            .name
            .strip_prefix("preview-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if last_activity >= cutoff {
            continue;
        }
        let latest = query_as::<Release>(
            "SELECT * FROM releases r WHERE r.project = $1 AND r.environment = $2
               AND r.id = (SELECT MAX(x.id) FROM releases x
                           WHERE x.project = r.project AND x.environment = r.environment AND x.service = r.service)
             ORDER BY r.service",
        )
        .binds((&preview.project, &preview.name))
        .fetch_all(&mut *conn)
        .await?;
        for release in latest {
            expired.push(ExpiredPreview {
                project: preview.project.clone(),
                environment: preview.name.clone(),
                service: release.service,
                repository: release.repository,
                branch: release.branch,
                number,
                last_activity,
            });
        }
    }
    Ok(expired)
}

/// Enqueues the teardown of an expired preview like a closed pull request's (superseding any
/// build of it in flight). Its unique key names the last activity, so asking again before the
/// preview is gone (or active again) changes nothing.
pub(crate) async fn enqueue_preview_teardown(
    conn: &mut Conn<'_>,
    preview: &ExpiredPreview,
) -> Result<PipelineEnqueued> {
    let mut teardown = preview_teardown(
        &preview.project,
        &preview.service,
        &preview.repository,
        &preview.branch,
        preview.number,
    )?;
    teardown.unique_key = Some(format!(
        "preview-expiry:{}/{}/{}@{}",
        preview.project, preview.service, preview.environment, preview.last_activity
    ));
    let enqueued = conn.enqueue_pipeline(teardown).await?;
    if !enqueued.duplicate {
        mark_superseded(conn, &enqueued.superseded, None).await?;
        let entity = format!("{}/{}", preview.project, preview.environment);
        let diff = json!({"service": preview.service, "idle_since": preview.last_activity, "pipeline": enqueued.id});
        audit(
            conn,
            "scheduler",
            change("preview.expire", "environment", &entity, Some(&preview.project), diff),
        )
        .await?;
    }
    Ok(enqueued)
}

impl Store {
    /// Preview environments (`preview-<n>`) without a release or deployment for `ttl`, per service.
    pub async fn expired_previews(&self, ttl: Duration, now_ms: i64) -> Result<Vec<ExpiredPreview>> {
        let cutoff = now_ms - ttl.as_millis() as i64;
        self.read(async |conn| expired_previews(conn, cutoff).await).await
    }
    /// Enqueues an expired preview's `preview-teardown` (audited `preview.expire`); asking again
    /// for the same idle preview returns the pipeline already enqueued (`duplicate`).
    pub async fn enqueue_preview_teardown(&self, preview: &ExpiredPreview) -> Result<PipelineEnqueued> {
        self.write(async |conn| enqueue_preview_teardown(conn, preview).await)
            .await
    }
}
