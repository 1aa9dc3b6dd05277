//! Statuses are enums end to end: a word in the database that no enum knows (written by a newer
//! version, or by hand) makes the read fail with an error naming it — never a panic, never a
//! silently wrong state.

use sqlx::Connection;

use enclii_store::{BuildTrigger, MasterKey, ReleaseStatus, ReleaseTrigger, Store, StoreConfig};

#[tokio::test]
async fn an_unknown_release_status_in_the_database_is_an_error_naming_it() {
    let path = std::env::temp_dir().join(format!(
        "api_test_vocabulary_{}_{}.db",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap()
    ));
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(StoreConfig {
        database_url: url.clone(),
        queue_url: None,
        max_connections: 2,
        master_key: MasterKey::generate(),
    })
    .await
    .unwrap();
    enclii_store::fixtures::shop_api(&store).await.unwrap();
    let trigger = BuildTrigger {
        project: "shop".into(),
        service: "api".into(),
        git_sha: "a".repeat(40),
        branch: "main".into(),
        deploy_to: None,
        trigger: ReleaseTrigger::Api,
    };
    let (release, _) = store.trigger_build("user:dev", &trigger).await.unwrap();
    assert_eq!(release.status, ReleaseStatus::Building);
    assert_eq!(release.trigger, ReleaseTrigger::Api);

    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE releases SET status = 'half_done' WHERE id = $1")
        .bind(release.id)
        .execute(&mut raw)
        .await
        .unwrap();

    let error = store.release(release.id).await.unwrap_err().to_string();
    assert!(error.contains("`half_done` is not a release status"), "{error}");
    drop(store);
    let _ = std::fs::remove_file(path);
}
