//! What replicas did on their own between deploys — an exit the engine restarted, a restart after
//! failed liveness probes — as the deploy target reported it: the service's history beside its
//! deployments (`GET …/services/{s}/events`). The scheduler deletes them after 30 days.

use serde::Serialize;

use crate::db::{Conn, query, query_as};
use crate::error::Result;
use crate::model::{ReplicaEventKind, ServiceKey};
use crate::{Store, now_ms};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ReplicaEvent {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub service: String,
    #[sqlx(rename = "release_id")]
    pub release: i64,
    pub replica: String,
    pub kind: ReplicaEventKind,
    pub detail: String,
    pub created_at: i64,
}

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewReplicaEvent {
    pub key: ServiceKey,
    pub release: i64,
    pub replica: String,
    pub kind: ReplicaEventKind,
    pub detail: String,
}

/// The most an answer lists.
const MAX_LISTED: i64 = 500;

async fn record(conn: &mut Conn<'_>, event: &NewReplicaEvent) -> Result<()> {
    query(
        "INSERT INTO replica_events (project, environment, service, release_id, replica, kind, detail, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .binds((
        &event.key.project,
        &event.key.environment,
        &event.key.service,
        event.release,
        &event.replica,
        event.kind,
        &event.detail,
        now_ms(),
    ))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

async fn list(conn: &mut Conn<'_>, project: &str, service: &str, limit: i64) -> Result<Vec<ReplicaEvent>> {
    crate::services::require_service(conn, project, service).await?;
    query_as::<ReplicaEvent>(
        "SELECT * FROM replica_events WHERE project = $1 AND service = $2 ORDER BY id DESC LIMIT $3",
    )
    .binds((project, service, limit.clamp(1, MAX_LISTED)))
    .fetch_all(&mut *conn)
    .await
}

impl Store {
    pub async fn record_replica_event(&self, event: &NewReplicaEvent) -> Result<()> {
        self.write(async |conn| record(conn, event).await).await
    }

    /// The service's events, newest first (at most `limit`, capped at 500).
    pub async fn replica_events(&self, project: &str, service: &str, limit: i64) -> Result<Vec<ReplicaEvent>> {
        self.read(async |conn| list(conn, project, service, limit).await).await
    }

    /// Deletes events older than `age`; how many went.
    pub async fn prune_replica_events(&self, age: std::time::Duration) -> Result<u64> {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        self.write(async |conn| {
            query("DELETE FROM replica_events WHERE created_at < $1")
                .bind(cutoff)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected())
        })
        .await
    }
}
