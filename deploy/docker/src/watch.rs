//! Keeping the router true to the engine, whatever happens to it between deploys.
//!
//! - **Container events.** A replica the engine starts again (its restart policy after a crash,
//!   or after the engine itself restarted) gets a new published port; one that dies stops
//!   answering. Each `start`/`die` of a replica re-reads its release's addresses into the table.
//! - **Engine restarts.** When the event stream breaks, the watcher waits for the engine to answer,
//!   subscribes again and re-reads every binding (what it missed meanwhile).
//! - **The sweep.** A deploy that was cancelled, killed or failed may leave replicas no binding
//!   serves. Every [`SWEEP_EVERY`], and after each resubscription, the replicas this target
//!   created (the owner label) whose release is neither the stable nor the canary one of their
//!   service are removed — under the deploy lock, so never one a deploy is starting.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use enclii_deploy_contract::error::Result;
use enclii_deploy_contract::model::{ReplicaEvent, ReplicaEventKind, ServiceKey};
use futures::StreamExt;
use tracing::{info, warn};

use crate::engine::{
    DockerTarget, LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_OWNER, LABEL_PROJECT, LABEL_RELEASE, LABEL_ROLE,
    LABEL_SERVICE,
};

/// How often replicas no binding owns are looked for.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long to wait between attempts to reach an engine that stopped answering.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// The service and release a replica's labels name.
fn replica_of(labels: &HashMap<String, String>) -> Option<(ServiceKey, i64)> {
    let key = ServiceKey::new(
        labels.get(LABEL_PROJECT)?,
        labels.get(LABEL_ENVIRONMENT)?,
        labels.get(LABEL_SERVICE)?,
    );
    Some((key, labels.get(LABEL_RELEASE)?.parse().ok()?))
}

impl DockerTarget {
    /// Follows the engine until the target is dropped (the task holds it weakly).
    pub(crate) fn watch(self: &Arc<Self>) {
        let target = Arc::downgrade(self);
        tokio::spawn(async move {
            while follow_until_the_stream_ends(&target).await {
                // The engine went away: wait until it answers again, then subscribe anew.
                loop {
                    let Some(this) = target.upgrade() else { return };
                    if this.docker.ping().await.is_ok() {
                        break;
                    }
                    drop(this);
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
            }
        });
    }

    /// Re-reads the addresses of `release`'s replicas into its binding (when it is the service's
    /// stable or canary release); saves the table when they changed.
    pub(crate) async fn refresh_backends(&self, key: &ServiceKey, release: i64) -> Result<()> {
        let serving = self.junctions.binding(key).and_then(|b| {
            b.stable
                .into_iter()
                .chain(b.canary.map(|(c, _)| c))
                .find(|backends| backends.release == release)
        });
        let Some(serving) = serving else {
            return Ok(());
        };
        let addrs = self.replica_addrs(key, release, &serving.generation).await?;
        let changed = self.junctions.update(key, |binding| {
            let Some(b) = binding else { return false };
            let mut changed = false;
            for backends in b.stable.iter_mut().chain(b.canary.iter_mut().map(|(c, _)| c)) {
                // Only over what was read: a deploy that changed the backends meanwhile (a roll
                // to a new generation, a new replica count) set them itself, and this read is
                // older than its.
                if *backends == serving && backends.addrs != addrs {
                    backends.addrs = addrs.clone();
                    changed = true;
                }
            }
            changed
        });
        if changed {
            info!(service = %key, release, ?addrs, "replica addresses changed on the engine");
            self.save().await?;
        }
        Ok(())
    }

    /// Re-reads every binding's addresses.
    async fn resync(&self) -> Result<()> {
        for (key, binding) in self.junctions.bindings() {
            let releases = binding.stable.iter().chain(binding.canary.iter().map(|(c, _)| c));
            for release in releases.map(|b| b.release).collect::<Vec<_>>() {
                self.refresh_backends(&key, release).await?;
            }
        }
        Ok(())
    }

    /// Removes this target's replicas that no binding serves (see the module's doc). Skipped
    /// while a deploy, shift or removal runs: the next sweep comes soon enough.
    pub(crate) async fn sweep(&self) -> Result<Vec<String>> {
        let Ok(_change) = self.changes.try_lock() else {
            return Ok(vec![]);
        };
        let labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_ROLE}=replica"),
            format!("{LABEL_OWNER}={}", self.owner()),
        ];
        let mut removed = Vec::new();
        for container in self.labelled_containers(labels).await? {
            let (Some(id), Some(labels)) = (container.id, container.labels) else {
                continue;
            };
            let Some((key, release)) = replica_of(&labels) else {
                continue;
            };
            let owned = self.junctions.binding(&key).is_some_and(|b| {
                b.stable.as_ref().is_some_and(|s| s.release == release)
                    || b.canary.as_ref().is_some_and(|(c, _)| c.release == release)
            });
            if !owned {
                self.remove_container(&id).await?;
                self.junctions.forget(&key, release);
                let name = container.names.and_then(|n| n.into_iter().next()).unwrap_or(id);
                removed.push(name.trim_start_matches('/').to_string());
            }
        }
        if !removed.is_empty() {
            info!(?removed, "removed replicas no deployment serves");
        }
        Ok(removed)
    }
}

impl DockerTarget {
    /// A serving replica's process ended on its own (not a removal, not this process's liveness
    /// restart): its restart policy starts it again; the exit goes to the service's history.
    async fn exited(&self, key: &ServiceKey, release: i64, attributes: &HashMap<String, String>) {
        let Some(name) = attributes.get("name") else { return };
        let ours = self.restarting.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        if ours || !self.serves(key, release, name) {
            return;
        }
        let code = attributes.get("exitCode").map_or("unknown", String::as_str);
        warn!(service = %key, replica = %name, exit_code = code, "a replica exited; the engine restarts it");
        self.report(ReplicaEvent {
            key: key.clone(),
            release,
            replica: name.clone(),
            kind: ReplicaEventKind::Exited,
            detail: format!("exited with code {code}; restarted by the engine"),
        })
        .await;
    }
}

/// Subscribes to the engine's replica events and follows them; `true` when the stream ended
/// (the engine went away), `false` when the target was dropped.
async fn follow_until_the_stream_ends(target: &Weak<DockerTarget>) -> bool {
    let Some(this) = target.upgrade() else { return false };
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["start".to_string(), "die".to_string()]),
        (
            "label",
            vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_ROLE}=replica")],
        ),
    ]);
    let mut events = Box::pin(
        this.docker
            .events(Some(EventsOptionsBuilder::default().filters(&filters).build())),
    );
    // Subscribed first, read second: nothing that happens in between is missed.
    catch_up(&this).await;
    drop(this);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.tick().await;
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(Ok(event)) = event else {
                    warn!("the Docker engine's event stream ended; following it again when it answers");
                    return true;
                };
                let Some(this) = target.upgrade() else { return false };
                let labels = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                if let Some((key, release)) = replica_of(&labels) {
                    if event.action.as_deref() == Some("die") {
                        this.exited(&key, release, &labels).await;
                    }
                    if let Err(e) = this.refresh_backends(&key, release).await {
                        warn!(service = %key, release, error = %e, "could not re-read the replicas' addresses");
                    }
                }
            }
            _ = sweep.tick() => {
                let Some(this) = target.upgrade() else { return false };
                if let Err(e) = this.sweep().await {
                    warn!(error = %e, "sweeping replicas no deployment serves failed");
                }
            }
        }
    }
}

/// After (re)subscribing: re-read every binding, then sweep.
async fn catch_up(target: &DockerTarget) {
    if let Err(e) = target.resync().await {
        warn!(error = %e, "could not re-read the replicas' addresses");
    }
    if let Err(e) = target.sweep().await {
        warn!(error = %e, "sweeping replicas no deployment serves failed");
    }
}
