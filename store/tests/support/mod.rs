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
