//! A store on a database of its own, for the store's and the API's integration tests (the API's
//! include this file by path). The including crate declares `common` (queue/tests/common) beside
//! this module.
#![allow(dead_code)]

use enclii_store::{MasterKey, Store, StoreConfig};

use super::common;

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Postgres,
    Sqlite,
}

/// Opens a store on a fresh database; keep the guard (it drops the PostgreSQL database) as long
/// as the store.
pub async fn open_store(db: Db) -> (Store, Option<common::TestDatabase>) {
    let (url, guard) = match db {
        Db::Postgres => {
            let guard = common::test_database().await;
            (guard.url.clone(), Some(guard))
        }
        Db::Sqlite => (common::fresh_sqlite_url(), None),
    };
    let store = Store::open(StoreConfig {
        database_url: url,
        queue_url: None,
        max_connections: 4,
        master_key: MasterKey::generate(),
    })
    .await
    .unwrap();
    (store, guard)
}

/// [`open_store`] with project `shop` and its service `web` at home in `prod` (repository
/// `github.com/org/shop`), whose spec's `spec` is the defaults merged with `spec`.
pub async fn shop_with_web(db: Db, spec: serde_json::Value) -> (Store, Option<common::TestDatabase>) {
    let (store, guard) = open_store(db).await;
    store.create_project("user:admin", "shop", "Shop").await.unwrap();
    let mut document = serde_json::json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": "shop", "environment": "prod", "name": "web"},
        "spec": {"source": {"git": {"repository": "https://github.com/org/shop", "branch": "main"}},
                 "runtime": {"ports": [3000]}},
    });
    if let serde_json::Value::Object(extra) = spec {
        for (key, value) in extra {
            document["spec"][key] = value;
        }
    }
    let draft = enclii_store::ServiceDraft {
        project: "shop".into(),
        name: "web".into(),
        environment: "prod".into(),
        repository: Some("github.com/org/shop".into()),
        branch: Some("main".into()),
        spec: document.to_string(),
    };
    store.apply_service("user:dev", &draft, &[]).await.unwrap();
    (store, guard)
}

/// `on_both_databases!(a, b)`: tests `postgres::a`, `sqlite::a`, … each calling `a(Db::…)` of the
/// including file (which imports `Db`) on a multi-threaded runtime.
#[allow(unused_macros)]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
    };
}
