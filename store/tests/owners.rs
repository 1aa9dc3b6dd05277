//! The platform keeps an Owner: the last Owner on `*` can be neither removed nor demoted (also not
//! by itself, also not by two Owners removing each other at once), and `recover_owner` — the
//! operator's way back — makes a subject Owner again with a new token, audited. On PostgreSQL and
//! on SQLite.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
#[macro_use]
mod support;

use enclii_store::{AuditFilter, Store, StoreError, TokenRecord};
use support::Db;

struct TestStore {
    store: Store,
    _db: Option<common::TestDatabase>,
}

async fn open(db: Db) -> TestStore {
    let (store, guard) = support::open_store(db).await;
    TestStore { store, _db: guard }
}

fn token(id: &str, subject: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: "hash".into(),
        subject: subject.into(),
        name: "test".into(),
        scopes: "[]".into(),
        project: None,
        created_at: 0,
        expires_at: None,
        revoked_at: None,
    }
}

async fn owners(store: &Store) -> Vec<String> {
    let mut owners: Vec<String> = store
        .role_bindings("*")
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.project == "*" && b.role == "Owner")
        .map(|b| b.subject)
        .collect();
    owners.sort();
    owners
}

fn assert_last_owner_refused(result: Result<impl std::fmt::Debug, StoreError>) {
    match result {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("last platform Owner"), "{message}");
            assert!(message.contains("Make another subject Owner"), "says how: {message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn the_last_owner_can_be_neither_removed_nor_demoted(db: Db) {
    let t = open(db).await;
    let store = &t.store;
    assert!(
        store
            .bootstrap("user:admin", "Owner", &token("admin0000000", "user:admin"))
            .await
            .unwrap()
    );
    assert_last_owner_refused(store.unbind_role("user:admin", "user:admin", "*").await);
    assert_last_owner_refused(store.bind_role("user:admin", "user:admin", "*", "Admin").await);
    assert_eq!(owners(store).await, ["user:admin"], "nothing changed");

    // Bindings elsewhere are not the platform's Owner: a project Owner may leave.
    store.create_project("user:admin", "shop", "Shop").await.unwrap();
    store
        .bind_role("user:admin", "user:ann", "shop", "Owner")
        .await
        .unwrap();
    store.unbind_role("user:admin", "user:ann", "shop").await.unwrap();

    // With a second Owner, either may go; then the one left is the last again.
    store.bind_role("user:admin", "user:bob", "*", "Owner").await.unwrap();
    store.bind_role("user:bob", "user:admin", "*", "Admin").await.unwrap();
    assert_eq!(owners(store).await, ["user:bob"]);
    assert_last_owner_refused(store.unbind_role("user:bob", "user:bob", "*").await);
    store.unbind_role("user:bob", "user:admin", "*").await.unwrap();
    assert_eq!(owners(store).await, ["user:bob"]);
}

/// Two Owners removing each other at the same moment: the check runs in each removal's own
/// transaction (with the Owner rows locked on PostgreSQL), so one wins and one is refused.
async fn two_owners_removing_each_other_at_once_leave_one(db: Db) {
    let t = open(db).await;
    let store = &t.store;
    store
        .bootstrap("user:admin", "Owner", &token("admin0000000", "user:admin"))
        .await
        .unwrap();
    for round in 0..10 {
        let other = format!("user:other{round}");
        store.bind_role("user:admin", &other, "*", "Owner").await.unwrap();
        let (a, b) = tokio::join!(
            store.unbind_role("user:admin", &other, "*"),
            store.unbind_role(&other, "user:admin", "*"),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let left = owners(store).await;
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        if left[0] != "user:admin" {
            // Put the bootstrap Owner back for the next round.
            store.bind_role(&left[0], "user:admin", "*", "Owner").await.unwrap();
            store.unbind_role("user:admin", &left[0], "*").await.unwrap();
        }
    }
}

async fn recover_owner_makes_a_subject_owner_again_with_a_new_token(db: Db) {
    let t = open(db).await;
    let store = &t.store;
    store
        .bootstrap("user:admin", "Owner", &token("admin0000000", "user:admin"))
        .await
        .unwrap();
    store.create_project("user:admin", "shop", "Shop").await.unwrap();
    store
        .bind_role("user:admin", "user:ops", "shop", "ReadOnly")
        .await
        .unwrap();
    let binding = store
        .recover_owner("operator:recover-owner", &token("recovered000", "user:ops"))
        .await
        .unwrap();
    assert_eq!((binding.project.as_str(), binding.role.as_str()), ("*", "Owner"));
    assert_eq!(owners(store).await, ["user:admin", "user:ops"]);
    let minted = store.token("recovered000").await.unwrap().expect("the new token");
    assert_eq!(minted.subject, "user:ops");
    // Recovering a subject that is already Owner only adds a token.
    store
        .recover_owner("operator:recover-owner", &token("recovered001", "user:admin"))
        .await
        .unwrap();
    assert_eq!(owners(store).await, ["user:admin", "user:ops"]);

    let events = store
        .list_audit(&AuditFilter {
            actor: Some("operator:recover-owner".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["token.create", "role.bind", "token.create", "role.bind"],
        "newest first"
    );
}

on_both_databases!(
    the_last_owner_can_be_neither_removed_nor_demoted,
    two_owners_removing_each_other_at_once_leave_one,
    recover_owner_makes_a_subject_owner_again_with_a_new_token,
);
