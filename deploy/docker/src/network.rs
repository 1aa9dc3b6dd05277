//! One Docker network per project environment (`enclii-<project>-<environment>`): a replica
//! joins its environment's network with its service's name as DNS alias, so `http://api:3000`
//! reaches service `api` from another service of the same environment, and containers of other
//! projects or environments — on other networks, which the engine isolates from each other — cannot
//! connect to it. The router does not need the networks: it reaches replicas on their ports
//! published on the host's loopback.

use std::collections::HashMap;

use bollard::models::{EndpointSettings, NetworkCreateRequest, NetworkingConfig};
use enclii_deploy_contract::error::Result;
use enclii_deploy_contract::model::ServiceKey;
use tracing::info;

use crate::engine::{DockerTarget, LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_PROJECT, docker_error, is_not_found};

impl DockerTarget {
    pub(crate) fn network_name(key: &ServiceKey) -> String {
        format!("enclii-{}-{}", key.project, key.environment)
    }

    /// Creates the environment's network unless it exists; returns its name. The engine accepts
    /// two networks of one name (and then refuses to attach to either, "ambiguous"), so creation
    /// is serialised in this process, and a duplicate another process made is removed (the
    /// oldest stays).
    pub(crate) async fn ensure_network(&self, key: &ServiceKey) -> Result<String> {
        let name = Self::network_name(key);
        let _one_at_a_time = self.networks.lock().await;
        let existing = self.networks_named(&name).await?;
        if !existing.is_empty() {
            self.remove_duplicates(&name, existing).await?;
            return Ok(name);
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            // Only the engine's own check-and-create makes two concurrent deploys of one
            // environment safe: the second create fails with 409 and uses the first's network.
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_PROJECT.to_string(), key.project.clone()),
                (LABEL_ENVIRONMENT.to_string(), key.environment.clone()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => info!(network = %name, "created the environment's network"),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {}
            Err(e) => return Err(docker_error("creating the environment's network")(e)),
        }
        let existing = self.networks_named(&name).await?;
        self.remove_duplicates(&name, existing).await?;
        Ok(name)
    }

    /// The networks named exactly `name` (the engine's filter matches substrings), oldest first.
    async fn networks_named(&self, name: &str) -> Result<Vec<bollard::models::Network>> {
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&HashMap::from([("name".to_string(), vec![name.to_string()])]))
            .build();
        let mut networks: Vec<_> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(docker_error("listing networks"))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        networks.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(networks)
    }

    async fn remove_duplicates(&self, name: &str, networks: Vec<bollard::models::Network>) -> Result<()> {
        for duplicate in networks.iter().skip(1).filter_map(|n| n.id.as_deref()) {
            match self.docker.remove_network(duplicate).await {
                Ok(()) => info!(network = %name, id = duplicate, "removed a duplicate of the environment's network"),
                Err(e) if is_not_found(&e) => {}
                // In use: something attached to it already; attaching by name fails until it goes.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 403 | 409, ..
                }) => {}
                Err(e) => return Err(docker_error("removing a duplicate network")(e)),
            }
        }
        Ok(())
    }

    /// How a container of `key` joins its environment's network: under `alias` when given.
    pub(crate) fn network_endpoint(network: &str, alias: Option<&str>) -> NetworkingConfig {
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: alias.map(|a| vec![a.to_string()]),
                    ..Default::default()
                },
            )])),
        }
    }

    /// Removes the environment's network once nothing uses it; while other services' containers
    /// are attached the engine refuses, and the last service's removal takes it.
    pub(crate) async fn remove_network_if_unused(&self, key: &ServiceKey) -> Result<()> {
        let name = Self::network_name(key);
        match self.docker.remove_network(&name).await {
            Ok(()) => {
                info!(network = %name, "removed the environment's network");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            // 403: "has active endpoints" (another service of the environment still runs).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 403 | 409, ..
            }) => Ok(()),
            Err(e) => Err(docker_error("removing the environment's network")(e)),
        }
    }
}
