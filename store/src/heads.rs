//! Where each repository's refs stand, as the signed bodies of accepted deliveries say, so that a
//! replayed or late delivery never moves a ref backwards (table `source_heads`).
//!
//! GitHub signs the body, not the `X-GitHub-Delivery` id: anyone who captured a delivery can
//! re-send it under a fresh id. What such a replay cannot change is what its body says about the
//! ref's history — the push's `before` commit and the head's time — and that is what decides:
//!
//! - the ref already points at this commit → [`RefAdvance::Current`] (nothing to build again);
//! - the push continues from the commit the ref points at (`before`) → [`RefAdvance::Forward`],
//!   force-pushes to an older commit included (that is a deliberate rollback, in order);
//! - otherwise the head's time decides: older than the ref's → [`RefAdvance::Stale`]; newer, or
//!   unknown → [`RefAdvance::Forward`] (deliveries GitHub lost or sent out of order).

use enclii_domain::github::RefMove;

use crate::db::{Conn, query, query_as};
use crate::error::Result;
use crate::now_ms;

/// What a delivery's [`RefMove`] does to the ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefAdvance {
    /// The ref moves to the delivery's commit: act on it.
    Forward,
    /// The ref already points there: a redelivery or replay of the newest event.
    Current,
    /// The delivery is older than what the ref holds: ignore it. `newest` is the ref's commit
    /// (empty for a closed pull request).
    Stale { newest: String },
}

/// Decides what `moved` does to its ref in `repository`, and records it when it moves forward.
/// The row is read with an UPDATE so that PostgreSQL locks it: concurrent deliveries for one ref
/// are decided one after the other.
pub(crate) async fn advance(conn: &mut Conn<'_>, repository: &str, moved: &RefMove) -> Result<RefAdvance> {
    let held = query_as::<(String, Option<i64>)>(
        "UPDATE source_heads SET sha = sha WHERE repository = $1 AND git_ref = $2 RETURNING sha, at_ms",
    )
    .binds((repository, &moved.git_ref))
    .fetch_optional(&mut *conn)
    .await?;
    let decision = match held {
        None => RefAdvance::Forward,
        Some((sha, _)) if sha == moved.sha => RefAdvance::Current,
        Some((sha, _)) if moved.before.as_deref() == Some(sha.as_str()) => RefAdvance::Forward,
        Some((sha, Some(held_at))) if moved.at_ms.is_some_and(|at| at < held_at) => RefAdvance::Stale { newest: sha },
        Some(_) => RefAdvance::Forward,
    };
    if decision == RefAdvance::Forward {
        query(
            "INSERT INTO source_heads (repository, git_ref, sha, at_ms, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repository, git_ref) DO UPDATE SET sha = $3, at_ms = $4, updated_at = $5",
        )
        .binds((repository, &moved.git_ref, &moved.sha, moved.at_ms, now_ms()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(decision)
}
