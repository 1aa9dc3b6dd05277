//! The scheduler's leader lease.

use std::time::Duration;

use crate::db::{Conn, query, query_scalar};
use crate::error::Result;
use crate::{Store, now_ms};

/// Takes the lease `name` for `holder` if it is free or expired, or renews it if `holder` has it:
/// one upsert, so two contenders cannot both win.
pub(crate) async fn try_lead(conn: &mut Conn<'_>, name: &str, holder: &str, ttl_ms: i64, now: i64) -> Result<bool> {
    let won = query_scalar::<String>(
        "INSERT INTO leader_leases (name, holder, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
         WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $4
         RETURNING holder",
    )
    .binds((name, holder, now + ttl_ms, now))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(won.is_some())
}

pub(crate) async fn resign(conn: &mut Conn<'_>, name: &str, holder: &str) -> Result<()> {
    query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
        .binds((name, holder))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Takes the lease `name` for `holder` for `ttl` if it is free or expired, or renews it if
    /// `holder` already has it; `false` while another holder's lease runs. One atomic upsert.
    pub async fn try_lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis() as i64;
        self.write(async |conn| try_lead(conn, name, holder, ttl_ms, now_ms()).await)
            .await
    }
    /// Gives the lease up (if `holder` has it), so another process can lead at once.
    pub async fn resign(&self, name: &str, holder: &str) -> Result<()> {
        self.write(async |conn| resign(conn, name, holder).await).await
    }
}
