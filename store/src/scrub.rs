//! At every start the store removes credentials that older versions stored in repository URLs
//! (refused since; `enclii_domain::credentials`) from the services and their spec versions. The
//! audit trail is append-only, so its diffs are shown through the same filter instead
//! ([`crate::AuditEvent`]'s `diff()`). A store with none reads each table once (`LIKE '%@%'`).

use enclii_domain::credentials::strip_url_credentials;

use crate::db::{Conn, query, query_as};
use crate::error::Result;

/// Rewrites every service and spec version whose spec text carries credentials in a URL;
/// returns how many rows changed.
pub(crate) async fn scrub_url_credentials(conn: &mut Conn<'_>) -> Result<u64> {
    let mut changed = 0;
    // `services.repository` is the repository's key, which never kept credentials.
    let services =
        query_as::<(String, String, String)>("SELECT project, name, spec FROM services WHERE spec LIKE '%://%@%'")
            .fetch_all(&mut *conn)
            .await?;
    for (project, name, spec) in services {
        let clean = strip_url_credentials(&spec);
        if clean == spec {
            continue;
        }
        query("UPDATE services SET spec = $3 WHERE project = $1 AND name = $2")
            .binds((&project, &name, clean.as_ref()))
            .execute(&mut *conn)
            .await?;
        changed += 1;
    }
    let versions = query_as::<(String, String, i64, String)>(
        "SELECT project, service, version, spec FROM service_spec_versions WHERE spec LIKE '%://%@%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (project, service, version, spec) in versions {
        let clean = strip_url_credentials(&spec);
        if clean == spec {
            continue;
        }
        query("UPDATE service_spec_versions SET spec = $4 WHERE project = $1 AND service = $2 AND version = $3")
            .binds((&project, &service, version, clean.as_ref()))
            .execute(&mut *conn)
            .await?;
        changed += 1;
    }
    Ok(changed)
}
