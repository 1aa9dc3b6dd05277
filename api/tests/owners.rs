//! The platform keeps an Owner: removing or demoting the last Owner on `*` — one's own binding
//! included — is a `409` problem saying what, why and how to fix it; with a second Owner it works.

mod support;

use axum::http::StatusCode;
use support::{Db, api};

fn assert_refused(r: &support::Response) {
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert_eq!(r.content_type, "application/problem+json");
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`user:admin` is the last platform Owner"),
        "what: {detail}"
    );
    assert!(detail.contains("nobody could govern the platform"), "why: {detail}");
    assert!(
        detail.contains("Make another subject Owner on `*` first"),
        "how: {detail}"
    );
}

async fn the_last_platform_owner_stays(db: Db) {
    let t = api(db).await;
    let owner = r#"{"role":"Owner"}"#;
    // The bootstrap Owner, the only one, can neither remove nor demote itself.
    assert_refused(&t.admin("DELETE", "/v1/projects/*/members/user:admin", None).await);
    assert_refused(
        &t.admin("PUT", "/v1/projects/*/members/user:admin", Some(r#"{"role":"Admin"}"#))
            .await,
    );
    assert_eq!(
        t.admin("GET", "/v1/whoami", None).await.status,
        StatusCode::OK,
        "still Owner"
    );

    // Another Owner first, then the first may go.
    let r = t.admin("PUT", "/v1/projects/*/members/user:bob", Some(owner)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let bob = t.user("user:bob", "Owner", "*").await;
    let r = t.call(&bob, "DELETE", "/v1/projects/*/members/user:admin", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    // Now bob is the last one.
    let r = t.call(&bob, "DELETE", "/v1/projects/*/members/user:bob", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("`user:bob` is the last platform Owner")
    );
    let r = t
        .call(
            &bob,
            "PUT",
            "/v1/projects/*/members/user:bob",
            Some(r#"{"role":"ReadOnly"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    // Re-granting Owner to the last Owner is no demotion.
    let r = t
        .call(&bob, "PUT", "/v1/projects/*/members/user:bob", Some(owner))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

#[tokio::test]
async fn the_last_platform_owner_stays_postgres() {
    the_last_platform_owner_stays(Db::Postgres).await;
}

#[tokio::test]
async fn the_last_platform_owner_stays_sqlite() {
    the_last_platform_owner_stays(Db::Sqlite).await;
}
