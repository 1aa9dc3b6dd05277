//! The PostgreSQL and SQLite migrations are written twice (the dialects differ in types and
//! triggers); this proves they build the same schema: every table and column exists in both.
//! A migration added to one database only fails here, naming what is missing where.

use std::collections::BTreeSet;

use sqlx::Connection;

#[path = "../../queue/tests/common/mod.rs"]
mod common;
mod support;

use support::{Db, open_store};

/// Tables that only one database has on purpose, with the reason.
const ONE_SIDED: &[(&str, &str)] = &[];

/// Bookkeeping of the migrators and of SQLite itself.
fn is_bookkeeping(table: &str) -> bool {
    table.starts_with("_sqlx") || table.starts_with("_switchyard") || table.starts_with("sqlite_")
}

async fn postgres_columns(url: &str) -> BTreeSet<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().filter(|(table, _)| !is_bookkeeping(table)).collect()
}

async fn sqlite_columns(url: &str) -> BTreeSet<(String, String)> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().filter(|(table, _)| !is_bookkeeping(table)).collect()
}

fn missing(from: &BTreeSet<(String, String)>, other: &BTreeSet<(String, String)>) -> Vec<String> {
    from.difference(other)
        .filter(|(table, _)| !ONE_SIDED.iter().any(|(t, _)| t == table))
        .map(|(table, column)| format!("{table}.{column}"))
        .collect()
}

#[tokio::test]
async fn postgres_and_sqlite_migrations_build_the_same_tables_and_columns() {
    let (_pg_store, guard) = open_store(Db::Postgres).await;
    let pg_url = guard.as_ref().unwrap().url.clone();
    let sqlite_url = common::fresh_sqlite_url();
    let _lite_store = enclii_store::Store::open(enclii_store::StoreConfig {
        database_url: sqlite_url.clone(),
        queue_url: None,
        max_connections: 2,
        master_key: enclii_store::MasterKey::generate(),
    })
    .await
    .unwrap();

    let postgres = postgres_columns(&pg_url).await;
    let sqlite = sqlite_columns(&sqlite_url).await;
    assert!(
        postgres.len() > 50,
        "expected the whole schema, read {} columns",
        postgres.len()
    );

    let only_postgres = missing(&postgres, &sqlite);
    let only_sqlite = missing(&sqlite, &postgres);
    assert!(
        only_postgres.is_empty() && only_sqlite.is_empty(),
        "the migrations disagree (add the column to both migrations/…/postgres and …/sqlite):\n  \
         only in PostgreSQL: {only_postgres:?}\n  only in SQLite: {only_sqlite:?}"
    );
}
