//! Job logs in the control-plane store (SQLite): numbering, paging, pruning by age.

use std::time::Duration;

use enclii_store::{LogLine, MasterKey, Store, StoreConfig};

async fn store() -> (Store, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "api_test_logs_{}_{}.db",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap()
    ));
    let store = Store::open(StoreConfig {
        database_url: format!("sqlite://{}", path.display()),
        queue_url: None,
        max_connections: 2,
        master_key: MasterKey::generate(),
    })
    .await
    .unwrap();
    (store, path)
}

#[tokio::test]
async fn lines_page_in_order_and_old_ones_are_pruned() {
    let (store, path) = store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let line = |job_id, seq, age_ms: i64| LogLine {
        job_id,
        seq,
        at: now - age_ms,
        line: format!("line {seq}"),
    };
    assert_eq!(store.last_log_seq(7).await.unwrap(), 0);
    let lines: Vec<LogLine> = (1..=5)
        .map(|seq| line(7, seq, 0))
        .chain([line(8, 1, 3_600_000)])
        .collect();
    store.append_log(&lines).await.unwrap();
    // A line written twice (a retried batch) is kept once.
    store.append_log(&lines[..1]).await.unwrap();
    assert_eq!(store.last_log_seq(7).await.unwrap(), 5);
    let page = store.read_log(7, 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 4]);

    assert_eq!(
        store.prune_logs(Duration::from_secs(60)).await.unwrap(),
        1,
        "only the hour-old line"
    );
    assert!(store.read_log(8, 0, 10).await.unwrap().is_empty());
    assert_eq!(store.read_log(7, 0, 10).await.unwrap().len(), 5);
    drop(store);
    let _ = std::fs::remove_file(path);
}
