//! The connection: errors without the URL, the warning about an evicting server.

use super::*;

#[tokio::test]
async fn connection_errors_hide_the_url() {
    let err = RedisQueue::connect("redis://user:s3cretpw@127.0.0.1:1/")
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(!message.contains("s3cretpw"), "{message}");
}

/// Collects the messages of warnings logged while it is the current subscriber.
struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = String::new();
            event.record(&mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                text.push_str(&format!("{}={value:?} ", field.name()));
            });
            self.0.lock().unwrap().push(text);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings_of(f: impl FnOnce()) -> Vec<String> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    tracing::subscriber::with_default(Warnings(seen.clone()), f);
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn an_evicting_redis_is_warned_about() {
    for policy in ["allkeys-lru", "volatile-ttl", "allkeys-random"] {
        let warned = warnings_of(|| warn_if_evicting(Some(policy)));
        assert_eq!(warned.len(), 1, "{policy}: {warned:?}");
        assert!(warned[0].contains("maxmemory-policy noeviction"), "{warned:?}");
        assert!(warned[0].contains("lose jobs"), "{warned:?}");
        assert!(warned[0].contains(policy), "{warned:?}");
    }
    // Nothing to say with noeviction, or when CONFIG is not allowed.
    assert!(warnings_of(|| warn_if_evicting(Some("noeviction"))).is_empty());
    assert!(warnings_of(|| warn_if_evicting(None)).is_empty());
    // connect reads the policy of the server.
    let q = queue().await;
    let mut con = q.con();
    let expected: Vec<String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(maxmemory_policy(&mut con).await, expected.get(1).cloned());
    assert!(expected.get(1).is_some());
}

#[tokio::test]
async fn a_redis_without_persistence_is_warned_about() {
    let warned = warnings_of(|| warn_if_volatile(Some("no"), Some("")));
    assert_eq!(warned.len(), 1, "{warned:?}");
    for words in ["restart loses every queued job", "rebuilds releases", "appendonly yes"] {
        assert!(warned[0].contains(words), "{words}: {warned:?}");
    }
    // Either kind of persistence is enough; settings that cannot be read say nothing.
    assert!(warnings_of(|| warn_if_volatile(Some("yes"), Some(""))).is_empty());
    assert!(warnings_of(|| warn_if_volatile(Some("no"), Some("3600 1 300 100"))).is_empty());
    assert!(warnings_of(|| warn_if_volatile(None, Some(""))).is_empty());
    assert!(warnings_of(|| warn_if_volatile(Some("no"), None)).is_empty());
    // connect reads both settings of the server.
    let q = queue().await;
    let mut con = q.con();
    let (appendonly, save) = persistence(&mut con).await;
    assert!(matches!(appendonly.as_deref(), Some("yes" | "no")), "{appendonly:?}");
    assert!(save.is_some());
}
