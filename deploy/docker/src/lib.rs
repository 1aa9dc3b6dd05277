//! The single-node target: releases run as containers on one Docker engine (through bollard),
//! behind the [`Junctions`] router.
//!
//! Each replica is a container named `enclii-<project>-<environment>-<service>-r<release>-g<gen>-<i>`
//! (`gen`: a digest of its environment, command, limits and volumes),
//! labelled with its project, environment, service and release, with the spec's CPU and memory
//! limits, restart policy `unless-stopped`, and its first port published on the loopback
//! interface for the router, and it joins its environment's own network under its service's
//! name (`network.rs`). A replica is healthy when the spec's readiness probe (HTTP GET or
//! TCP connect, run from the host against the published port) passes; a service without ports
//! is healthy when its container runs. The router's table is saved to `state_file` after every
//! change and reloaded (with the replicas' current ports) at start-up; while the target lives it
//! follows the engine's container events (a replica restarted on a new port, an engine restart)
//! and sweeps away replicas no binding serves (`watch.rs`); replicas with a liveness probe are probed
//! and restarted after failing it (`liveness.rs`). Add-ons (PostgreSQL, Redis) are containers of
//! their own on the environment's network, managed through `docker exec` (`addons.rs`).

pub mod junctions;

mod addon_backups;
mod addons;
mod engine;
mod jobs;
mod liveness;
mod network;
mod observe;
mod replicas;
mod target;
mod watch;

pub use engine::{DockerTarget, DockerTargetConfig, RegistryLogin};
pub use junctions::Junctions;
