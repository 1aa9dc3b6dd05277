//! Certificates in the control-plane store, on PostgreSQL and on SQLite: an order is never
//! doubled and a job of an older order changes nothing; an issued certificate's key is sealed and
//! opened for the routers; a failed renewal keeps the last certificate serving; what the
//! scheduler orders (verified domains without one, renewals in the window, failed orders an hour
//! on); the ACME account kept once per directory; HTTP-01 answers that expire.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
#[macro_use]
mod support;

use std::time::Duration;

use enclii_store::{CertificateStatus, DomainCheck, DomainCheckOutcome, NewDomain, OrderOutcome, Store};
use support::Db;

const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn shop(db: Db) -> (Store, Option<common::TestDatabase>) {
    support::shop_with_web(db, serde_json::json!({})).await
}

/// A domain proven (and so routed) now.
async fn verified(store: &Store, host: &str) {
    let domain = store
        .add_domain(
            "user:dev",
            &NewDomain {
                project: "shop".into(),
                environment: "prod".into(),
                service: "web".into(),
                host: host.into(),
                path: "/".into(),
                token: "enclii-verify-test".into(),
                window: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
    let outcome = store
        .record_domain_check("system:domains", domain.id, domain.round, DomainCheck::Found)
        .await
        .unwrap();
    assert!(matches!(outcome, DomainCheckOutcome::Verified(_)), "{outcome:?}");
}

fn issued(not_after: i64) -> OrderOutcome {
    OrderOutcome::Issued {
        chain_pem: "-----BEGIN CERTIFICATE-----\nchain\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
        not_after,
    }
}

async fn orders_are_never_doubled_and_a_failed_renewal_keeps_the_last_certificate(db: Db) {
    let (store, _guard) = shop(db).await;
    verified(&store, "app.shop.example").await;
    let first = store
        .request_certificate("user:dev", "shop", "app.shop.example")
        .await
        .unwrap()
        .expect("the first order starts");
    assert_eq!((first.status, first.orders), (CertificateStatus::Ordering, 1));
    assert!(
        store
            .request_certificate("user:dev", "shop", "app.shop.example")
            .await
            .unwrap()
            .is_none(),
        "an order under way is not doubled"
    );
    // A job of another order changes nothing.
    assert!(
        !store
            .record_certificate_order("app.shop.example", 7, &issued(now_ms() + DAY))
            .await
            .unwrap()
    );
    assert!(store.serving_certificates().await.unwrap().is_empty());

    let expiry = now_ms() + 90 * DAY;
    assert!(
        store
            .record_certificate_order("app.shop.example", 1, &issued(expiry))
            .await
            .unwrap()
    );
    let serving = store.serving_certificates().await.unwrap();
    assert_eq!(serving.len(), 1);
    assert_eq!(serving[0].host, "app.shop.example");
    assert!(
        serving[0].key_pem.contains("secret"),
        "the key is opened for the routers"
    );
    assert!(!format!("{:?}", serving[0]).contains("secret"), "and never printed");
    let row = store.certificate("app.shop.example").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.not_after, row.error),
        (CertificateStatus::Issued, Some(expiry), None)
    );

    // A renewal that fails: the reason is kept, the last certificate still serves.
    let renewal = store
        .request_certificate("system:acme", "shop", "app.shop.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewal.orders, 2);
    assert_eq!(
        store.serving_certificates().await.unwrap().len(),
        1,
        "serves while renewing"
    );
    let failed = OrderOutcome::Failed("connection refused (urn:ietf:params:acme:error:connection)".into());
    assert!(
        store
            .record_certificate_order("app.shop.example", 2, &failed)
            .await
            .unwrap()
    );
    let row = store.certificate("app.shop.example").await.unwrap().unwrap();
    assert_eq!(row.status, CertificateStatus::Failed);
    assert!(row.error.unwrap().contains("connection refused"));
    assert_eq!(row.not_after, Some(expiry));
    assert_eq!(
        store.serving_certificates().await.unwrap().len(),
        1,
        "the last certificate serves"
    );
    assert!(
        !store
            .record_certificate_order("app.shop.example", 2, &issued(expiry))
            .await
            .unwrap(),
        "an ended order is not recorded twice"
    );

    // The audit trail has the orders, the issue and the failure, and never the key.
    let audit = store
        .list_audit(&enclii_store::AuditFilter {
            project: Some("shop".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let text = serde_json::to_string(&audit).unwrap();
    for action in ["certificate.order", "certificate.issue", "certificate.fail"] {
        assert!(text.contains(action), "{action} in {text}");
    }
    assert!(!text.contains("secret"), "no key in the audit trail");
}

async fn the_scheduler_orders_new_domains_renewals_and_nothing_else(db: Db) {
    let (store, _guard) = shop(db).await;
    let renew = Duration::from_secs(30 * 86_400);
    verified(&store, "new.shop.example").await;
    verified(&store, "*.wild.shop.example").await;
    // A verified domain without a certificate is due; a wildcard is not (HTTP-01 cannot prove it).
    let ordered = store.order_due_certificates(now_ms(), renew, 50).await.unwrap();
    assert_eq!(ordered, ["new.shop.example"]);
    assert!(
        store
            .order_due_certificates(now_ms(), renew, 50)
            .await
            .unwrap()
            .is_empty(),
        "under way"
    );

    // Issued for 90 days: due only inside the renewal window.
    store
        .record_certificate_order("new.shop.example", 1, &issued(now_ms() + 90 * DAY))
        .await
        .unwrap();
    assert!(
        store
            .order_due_certificates(now_ms(), renew, 50)
            .await
            .unwrap()
            .is_empty()
    );
    let in_window = now_ms() + 61 * DAY;
    assert_eq!(
        store.order_due_certificates(in_window, renew, 50).await.unwrap(),
        ["new.shop.example"]
    );
    // That renewal fails: not ordered again until an hour later.
    store
        .record_certificate_order("new.shop.example", 2, &OrderOutcome::Failed("rateLimited".into()))
        .await
        .unwrap();
    assert!(
        store
            .order_due_certificates(now_ms(), renew, 50)
            .await
            .unwrap()
            .is_empty()
    );
    let hour_on = now_ms() + 3_700_000;
    assert_eq!(
        store.order_due_certificates(hour_on, renew, 50).await.unwrap(),
        ["new.shop.example"]
    );
}

async fn the_acme_account_is_kept_once_and_challenges_expire(db: Db) {
    let (store, _guard) = support::open_store(db).await;
    let directory = "https://acme.example/dir";
    assert_eq!(store.acme_account(directory).await.unwrap(), None);
    assert_eq!(
        store.save_acme_account(directory, "{\"first\":1}").await.unwrap(),
        "{\"first\":1}"
    );
    assert_eq!(
        store.save_acme_account(directory, "{\"second\":2}").await.unwrap(),
        "{\"first\":1}",
        "the account saved first is the one kept"
    );
    assert_eq!(store.acme_account("https://other.example/dir").await.unwrap(), None);

    let token = "tok_0123456789abcdefghij";
    store
        .put_acme_challenge(token, "tok.thumbprint", "app.shop.example", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.acme_challenge(token).await.unwrap().as_deref(),
        Some("tok.thumbprint")
    );
    store.delete_acme_challenge(token).await.unwrap();
    assert_eq!(store.acme_challenge(token).await.unwrap(), None);
    store
        .put_acme_challenge(token, "tok.thumbprint", "app.shop.example", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.acme_challenge(token).await.unwrap(),
        None,
        "an expired answer is gone"
    );
}

on_both_databases!(
    orders_are_never_doubled_and_a_failed_renewal_keeps_the_last_certificate,
    the_scheduler_orders_new_domains_renewals_and_nothing_else,
    the_acme_account_is_kept_once_and_challenges_expire,
);
