//! The store as the sink of the targets' replica events (exits, failed liveness probes): each
//! becomes a row of the service's history. A write that fails is logged; the target goes on.

use std::sync::Arc;

use async_trait::async_trait;
use enclii_deploy_contract::ReplicaEvents;
use enclii_deploy_contract::model::{ReplicaEvent, ReplicaEventKind};
use enclii_store::{NewReplicaEvent, Store};
use tracing::warn;

pub struct StoreReplicaEvents(pub Arc<Store>);

#[async_trait]
impl ReplicaEvents for StoreReplicaEvents {
    async fn record(&self, event: ReplicaEvent) {
        let kind = match event.kind {
            ReplicaEventKind::Exited => enclii_store::ReplicaEventKind::Exited,
            ReplicaEventKind::LivenessFailed => enclii_store::ReplicaEventKind::LivenessFailed,
        };
        let new = NewReplicaEvent {
            key: event.key,
            release: event.release,
            replica: event.replica,
            kind,
            detail: event.detail,
        };
        if let Err(e) = self.0.record_replica_event(&new).await {
            warn!(service = %new.key, replica = %new.replica, error = %e, "a replica's event could not be recorded");
        }
    }
}
