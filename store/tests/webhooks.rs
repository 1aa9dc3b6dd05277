//! Deliveries with the queue in Redis, where enqueued jobs outlive a rolled-back transaction: copies
//! of one delivery arriving together (a pull request's, which always rebuilds and so has no unique
//! key to fall back on) enqueue one pipeline, and answer with one outcome. The control plane has a
//! database of its own, the queue a Redis key prefix of its own.

#[path = "../../queue/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use enclii_queue::redis::RedisQueue;
use enclii_queue::{Backend, JobFilter};
use enclii_store::{MasterKey, Store, StoreConfig};

async fn copies_of_a_delivery_enqueue_once_on_redis(url: String) {
    let prefix = format!("webhooks_{:016x}", rand::random::<u64>());
    let queue: Arc<dyn Backend> = Arc::new(
        RedisQueue::connect_with_prefix(&common::redis_url(), &prefix)
            .await
            .expect("Redis must be running for the tests"),
    );
    let config = StoreConfig {
        database_url: url,
        queue_url: None,
        max_connections: 8,
        master_key: MasterKey::generate(),
    };
    let store = Arc::new(Store::open_with_queue(config, Some(queue.clone())).await.unwrap());
    enclii_store::fixtures::shop_api(&store).await.unwrap();
    let delivery = enclii_store::fixtures::pull_request_opened("pr-opened");
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (store, delivery) = (store.clone(), delivery.clone());
        copies.spawn(async move { store.accept_webhook(&delivery).await.unwrap() });
    }
    let outcomes = copies.join_all().await;
    let fresh: Vec<_> = outcomes.iter().filter(|o| !o.duplicate).collect();
    assert_eq!(fresh.len(), 1, "{outcomes:?}");
    assert_eq!(fresh[0].pipelines.len(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| o.pipelines == fresh[0].pipelines),
        "{outcomes:?}"
    );
    let clones = queue
        .list_jobs(&JobFilter {
            kind: Some("clone".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(clones.len(), 1, "one run enqueued in Redis: {clones:?}");
    assert_eq!(store.list_deliveries(None, 10).await.unwrap().len(), 1);
    let mut redis = redis::Client::open(common::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut redis).unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(&keys).query(&mut redis).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_copies_of_a_delivery_enqueue_once() {
    let db = common::test_database().await;
    copies_of_a_delivery_enqueue_once_on_redis(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_redis_copies_of_a_delivery_enqueue_once() {
    copies_of_a_delivery_enqueue_once_on_redis(common::fresh_sqlite_url()).await;
}
