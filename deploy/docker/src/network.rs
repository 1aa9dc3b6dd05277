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

    /// Creates the environment's network unless it exists; returns its name.
    pub(crate) async fn ensure_network(&self, key: &ServiceKey) -> Result<String> {
        let name = Self::network_name(key);
        match self.docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error("inspecting the environment's network")(e)),
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
            Ok(_) => {
                info!(network = %name, "created the environment's network");
                Ok(name)
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(name),
            Err(e) => Err(docker_error("creating the environment's network")(e)),
        }
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
