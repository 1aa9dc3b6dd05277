//! The connection: the eviction policy and persistence checks, the wake-up listener, errors
//! without credentials.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;
use ::redis::aio::ConnectionManager;
use futures::StreamExt;

use crate::backend::Wakeup;
use crate::error::QueueError;

use super::NAME;
use super::decode::*;

/// The server's `maxmemory-policy`; `None` when it cannot be read (managed Redis services often
/// disable CONFIG).
pub(super) async fn maxmemory_policy(con: &mut ConnectionManager) -> Option<String> {
    config_value(con, "maxmemory-policy").await
}

/// The server's persistence settings: (`appendonly`, `save`); each `None` when it cannot be read.
pub(super) async fn persistence(con: &mut ConnectionManager) -> (Option<String>, Option<String>) {
    (config_value(con, "appendonly").await, config_value(con, "save").await)
}

/// One `CONFIG GET` value; `None` when it cannot be read.
async fn config_value(con: &mut ConnectionManager, name: &str) -> Option<String> {
    let reply: Value = match ::redis::cmd("CONFIG").arg("GET").arg(name).query_async(con).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(error = %e, setting = name, "cannot read a Redis setting");
            return None;
        }
    };
    let value = match reply {
        // RESP2: [name, value]; RESP3: {name: value}.
        Value::Array(items) => items.into_iter().nth(1)?,
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        _ => return None,
    };
    opt_string(value).ok().flatten()
}

/// The queue lives only in Redis: a key evicted under memory pressure loses jobs (or a pipeline,
/// a lease, a count), and an evicted id sequence makes ids be handed out again. Not refused, as
/// the server may never reach its memory limit, but said loudly.
pub(super) fn warn_if_evicting(policy: Option<&str>) {
    if let Some(policy) = policy.filter(|p| !p.eq_ignore_ascii_case("noeviction")) {
        tracing::warn!(
            maxmemory_policy = policy,
            "Redis may evict keys (maxmemory-policy is `{policy}`): evicted keys lose jobs and can make \
             job ids be reused; the Redis used for the queue must run with `maxmemory-policy noeviction`"
        );
    }
}

/// A server with neither an append-only file nor snapshots keeps the queue only in memory: its
/// restart empties it. Enclii notices releases whose pipeline was lost and builds them again, and
/// raises the id sequences above the ids the control plane holds, but every other queued job is
/// gone. Not refused (tests and benchmarks run such a server), but said loudly. Settings that
/// cannot be read (CONFIG disabled) say nothing.
pub(super) fn warn_if_volatile(appendonly: Option<&str>, save: Option<&str>) {
    let (Some(appendonly), Some(save)) = (appendonly, save) else {
        return;
    };
    if appendonly.eq_ignore_ascii_case("no") && save.trim().is_empty() {
        tracing::warn!(
            appendonly,
            save,
            "Redis persists nothing (appendonly no, no save points): a Redis restart loses every queued job. \
             Enclii rebuilds releases whose pipeline was lost, but jobs outside releases (cron runs, deploys \
             and rollbacks, teardowns, cost samples, …) are lost; run the Redis used for the queue with \
             `appendonly yes`"
        );
    }
}

pub(super) async fn listen(client: ::redis::Client, channel: String, notify: Arc<Wakeup>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    // Wake pollers after a (re)connect: messages may have been missed.
                    notify.wake();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        notify.wake();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SUBSCRIBE failed; workers fall back to polling"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot open the Redis pub/sub connection; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A connection failure, with the URL and any credentials it carries removed from the message.
pub(super) fn unavailable(url: &str, e: &::redis::RedisError) -> QueueError {
    let mut message = e.to_string();
    if !url.is_empty() {
        message = message.replace(url, "<redis url>");
    }
    if let Some((_, rest)) = url.split_once("://")
        && let Some((userinfo, _)) = rest.rsplit_once('@')
    {
        let mut secrets: Vec<&str> = vec![userinfo];
        secrets.extend(userinfo.split(':'));
        for secret in secrets.into_iter().filter(|s| s.len() >= 3) {
            message = message.replace(secret, "***");
        }
    }
    QueueError::Unavailable {
        backend: NAME,
        message,
        source: None,
    }
}
