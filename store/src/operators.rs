//! What operators control and watch: per-project queue controls (limits and a pause) and the
//! worker processes' heartbeats.
//!
//! The queue enforces limits at claim time but keeps only the *effective* ones; the controls here
//! are their source of truth, so that a pause (effective `max_running = 0`) can be lifted back to
//! the limits the operator set, and so that a fresh queue (a flushed Redis) can be given them again.

use enclii_queue::ProjectLimits;
use serde::Serialize;

use crate::Store;
use crate::audit::audit;
use crate::db::{query, query_as};
use crate::error::Result;
use crate::model::Change;
use crate::now_ms;

/// A project's queue limits as operators set them, and whether its queue is paused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueControl {
    pub project: String,
    /// Jobs of the project running at once; `null`: unlimited.
    pub max_running: Option<i64>,
    /// Jobs started per minute; `null`: unlimited.
    pub jobs_per_minute: Option<i64>,
    /// No job of the project starts while paused (running ones finish; enqueues are kept).
    pub paused: bool,
    pub updated_at: i64,
    pub updated_by: String,
}

impl QueueControl {
    /// What the queue must enforce: the limits, or nothing may start while paused.
    pub fn effective(&self) -> ProjectLimits {
        let limit = |v: Option<i64>| v.map(|v| v.clamp(0, i64::from(u32::MAX)) as u32);
        ProjectLimits {
            max_running: if self.paused { Some(0) } else { limit(self.max_running) },
            jobs_per_minute: limit(self.jobs_per_minute),
        }
    }
}

/// A worker process as its last heartbeat described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct WorkerRecord {
    /// The id it claims jobs under (jobs' `worker`).
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// JSON array of the job kinds it handles.
    pub kinds: String,
    pub concurrency: i64,
    /// JSON object: the job kinds it cannot run, each with the reason (`{"build": "no Docker
    /// engine at …"}`).
    pub unavailable: String,
    pub started_at: i64,
    pub last_seen: i64,
    /// Set when it shut down cleanly.
    pub stopped_at: Option<i64>,
}

/// Workers not seen for this long are forgotten (their rows deleted by the next heartbeat).
const FORGET_WORKERS_AFTER_MS: i64 = 24 * 3_600_000;

/// A heartbeat's description of a worker process.
pub struct WorkerBeat<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub kinds: &'a [String],
    pub concurrency: usize,
    /// Job kinds this process cannot run, each with the reason and what to set to run it.
    pub unavailable: &'a std::collections::BTreeMap<String, String>,
}

impl Store {
    pub async fn queue_controls(&self) -> Result<Vec<QueueControl>> {
        self.read(async |conn| {
            query_as::<QueueControl>("SELECT * FROM queue_controls ORDER BY project")
                .fetch_all(&mut *conn)
                .await
        })
        .await
    }

    /// Sets a project's limits (keeping its pause) and returns the new control, audited.
    pub async fn set_queue_limits(
        &self,
        actor: &str,
        project: &str,
        max_running: Option<u32>,
        jobs_per_minute: Option<u32>,
    ) -> Result<QueueControl> {
        let diff = serde_json::json!({"max_running": max_running, "jobs_per_minute": jobs_per_minute});
        self.change_queue_control(actor, project, "project.limits", diff, |c| {
            c.max_running = max_running.map(i64::from);
            c.jobs_per_minute = jobs_per_minute.map(i64::from);
        })
        .await
    }

    /// Pauses or resumes a project's queue and returns the new control, audited.
    pub async fn set_queue_paused(&self, actor: &str, project: &str, paused: bool) -> Result<QueueControl> {
        let action = if paused { "queue.pause" } else { "queue.resume" };
        self.change_queue_control(actor, project, action, serde_json::json!({"paused": paused}), |c| {
            c.paused = paused
        })
        .await
    }

    async fn change_queue_control(
        &self,
        actor: &str,
        project: &str,
        action: &str,
        diff: serde_json::Value,
        edit: impl FnOnce(&mut QueueControl),
    ) -> Result<QueueControl> {
        self.write(async |conn| {
            let mut control = query_as::<QueueControl>("SELECT * FROM queue_controls WHERE project = $1")
                .bind(project)
                .fetch_optional(&mut *conn)
                .await?
                .unwrap_or_else(|| QueueControl {
                    project: project.to_string(),
                    ..Default::default()
                });
            edit(&mut control);
            control.updated_at = now_ms();
            control.updated_by = actor.to_string();
            query(
                "INSERT INTO queue_controls (project, max_running, jobs_per_minute, paused, updated_at, updated_by)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (project) DO UPDATE SET max_running = $2, jobs_per_minute = $3, paused = $4,
                     updated_at = $5, updated_by = $6",
            )
            .binds((
                &control.project,
                control.max_running,
                control.jobs_per_minute,
                control.paused,
                control.updated_at,
                &control.updated_by,
            ))
            .execute(&mut *conn)
            .await?;
            let change = Change {
                action,
                entity_type: "project",
                entity: project.to_string(),
                project: Some(project),
                diff,
            };
            audit(conn, actor, change).await?;
            Ok(control)
        })
        .await
    }

    /// Records a worker's heartbeat (the first one registers it).
    pub async fn worker_heartbeat(&self, beat: &WorkerBeat<'_>) -> Result<()> {
        let now = now_ms();
        let kinds = serde_json::Value::from(beat.kinds).to_string();
        let unavailable = serde_json::to_string(beat.unavailable).unwrap_or_else(|_| "{}".into());
        self.write(async |conn| {
            query(
                "INSERT INTO workers (id, host, pid, kinds, concurrency, started_at, last_seen, unavailable)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET last_seen = $6, kinds = $4, concurrency = $5, unavailable = $7",
            )
            .binds((
                beat.id,
                beat.host,
                i64::from(beat.pid),
                &kinds,
                beat.concurrency as i64,
                now,
                &unavailable,
            ))
            .execute(&mut *conn)
            .await?;
            query("DELETE FROM workers WHERE last_seen < $1")
                .bind(now - FORGET_WORKERS_AFTER_MS)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Marks a worker as stopped (a clean shutdown).
    pub async fn worker_stopped(&self, id: &str) -> Result<()> {
        self.write(async |conn| {
            query("UPDATE workers SET stopped_at = $2, last_seen = $2 WHERE id = $1")
                .binds((id, now_ms()))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Workers seen since `since_ms` (epoch ms), most recently seen first. A read: release views
    /// call it (their `waiting` reason); heartbeats delete the rows of long-gone workers.
    pub async fn workers(&self, since_ms: i64) -> Result<Vec<WorkerRecord>> {
        self.read(async |conn| {
            query_as::<WorkerRecord>("SELECT * FROM workers WHERE last_seen >= $1 ORDER BY last_seen DESC, id")
                .bind(since_ms)
                .fetch_all(&mut *conn)
                .await
        })
        .await
    }
}
