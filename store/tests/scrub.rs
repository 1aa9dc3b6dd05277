//! Credentials an older version stored in repository URLs (before they were refused: issue 14,
//! defect 5) are gone after the next start: from the service's spec and its spec versions, and
//! from the audit diffs as they are shown (the trail itself is append-only). Each test has its
//! own database.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use enclii_store::{AuditFilter, MasterKey, Store, StoreConfig};
use support::Db;

async fn open(url: &str) -> Store {
    Store::open(StoreConfig {
        database_url: url.to_string(),
        queue_url: None,
        max_connections: 2,
        master_key: MasterKey::generate(),
    })
    .await
    .unwrap()
}

/// What a version without the check wrote: the spec with a token in its repository URL, and an
/// audit entry quoting it.
async fn write_as_an_older_version(url: &str, db: Db) {
    let statements = [
        "UPDATE services SET spec = REPLACE(spec, 'https://github.com', 'https://bob:ghp_s3cret@github.com')",
        "UPDATE service_spec_versions SET spec = REPLACE(spec, 'https://github.com', 'https://bob:ghp_s3cret@github.com')",
        "INSERT INTO audit_events (at, actor, action, entity_type, entity, project, diff)
         VALUES (1, 'user:dev', 'service.apply', 'service', 'shop/api', 'shop',
                 '{\"repository\":\"https://bob:ghp_s3cret@github.com/org/shop\"}')",
    ];
    match db {
        Db::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
        Db::Sqlite => {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
    }
}

async fn credentials_stored_by_an_older_version_are_gone_after_a_start(db: Db) {
    let (url, _guard) = match db {
        Db::Postgres => {
            let guard = common::test_database().await;
            (guard.url.clone(), Some(guard))
        }
        Db::Sqlite => (common::fresh_sqlite_url(), None),
    };
    let store = open(&url).await;
    enclii_store::fixtures::shop_api(&store).await.unwrap();
    drop(store);
    write_as_an_older_version(&url, db).await;

    let store = open(&url).await;
    let service = store.service("shop", "api").await.unwrap();
    assert!(!service.spec.contains("s3cret"), "{}", service.spec);
    assert!(service.spec.contains("https://github.com/org/shop"), "{}", service.spec);
    for version in store.spec_versions("shop", "api").await.unwrap() {
        assert!(!version.spec.contains("s3cret"), "{}", version.spec);
    }
    let filter = AuditFilter {
        project: Some("shop".into()),
        ..AuditFilter::default()
    };
    for event in store.list_audit(&filter).await.unwrap() {
        let diff = event.diff_json().to_string();
        assert!(!diff.contains("s3cret"), "{diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_credentials_stored_by_an_older_version_are_gone_after_a_start() {
    credentials_stored_by_an_older_version_are_gone_after_a_start(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_credentials_stored_by_an_older_version_are_gone_after_a_start() {
    credentials_stored_by_an_older_version_are_gone_after_a_start(Db::Sqlite).await
}
