//! The audit trail: every mutating operation writes its event in its own transaction.

use crate::db::{Conn, query, query_as};
use crate::error::Result;
use crate::model::*;
use crate::{Store, now_ms};

pub(crate) async fn audit(conn: &mut Conn<'_>, actor: &str, change: Change<'_>) -> Result<()> {
    query(
        "INSERT INTO audit_events (at, actor, action, entity_type, entity, project, diff)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .binds((
        now_ms(),
        actor,
        change.action,
        change.entity_type,
        &change.entity,
        change.project,
        change.diff.to_string(),
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn list_audit(conn: &mut Conn<'_>, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
    query_as::<AuditEvent>(
        "SELECT * FROM audit_events
         WHERE ($1 IS NULL OR project = $1) AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $3)
           AND ($4 IS NULL OR entity_type = $4) AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .binds((
        &filter.project,
        &filter.actor,
        &filter.action,
        &filter.entity_type,
        filter.since,
        filter.before,
        filter.limit.unwrap_or(100).clamp(1, 1000),
    ))
    .fetch_all(&mut *conn)
    .await
}

pub(crate) fn change<'a>(
    action: &'a str,
    entity_type: &'a str,
    entity: &str,
    project: Option<&'a str>,
    diff: serde_json::Value,
) -> Change<'a> {
    Change {
        action,
        entity_type,
        entity: entity.to_string(),
        project,
        diff,
    }
}

impl Store {
    /// Audits an action whose effect lives elsewhere (the queue: cancel, retry, limits).
    pub async fn audit(&self, actor: &str, change: Change<'_>) -> Result<()> {
        self.write(async |conn| audit(conn, actor, change).await).await
    }
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        self.read(async |conn| list_audit(conn, filter).await).await
    }
}
