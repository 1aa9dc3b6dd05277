//! The Kubernetes deploy target: [`KubernetesTarget`] implements [`enclii_deploy_contract::Target`] with
//! kube-rs and server-side apply (field manager `enclii`, forced).
//!
//! Objects, per environment (namespace `enclii-<project>-<environment>`):
//! - the `Namespace`; a `ResourceQuota` (`enclii-quota`) when the environment has limits;
//!   `NetworkPolicy`s: `enclii-default-deny` (ingress and egress), `enclii-allow-ingress` (from
//!   the ingress controller's namespace and the namespace itself), `enclii-allow-egress` (DNS,
//!   the namespace, addresses outside the cluster).
//!
//! Per service (`<service>`, all labelled with project, environment, service, release, track and
//! `enclii.dev/cost-center`):
//! - a `Secret` per secret set (read with `envFrom`), a `PersistentVolumeClaim` per volume;
//! - the stable track: `Deployment` (probes, resources, RollingUpdate maxSurge 1 /
//!   maxUnavailable 0), `Service`, `Ingress` with cert-manager TLS, `HorizontalPodAutoscaler`
//!   (autoscaling/v2) when autoscaled, a `CronJob` per spec job;
//! - a canary: `<service>-canary` `Deployment` and `Service`, an ingress-nginx canary `Ingress`
//!   whose `canary-weight` is the canary's share, and a `ConfigMap` holding the stable objects
//!   `promote` applies;
//! - one-off runs: a `batch/v1` `Job` `<service>-<job>-<run>-<attempt>` (backoffLimit 0).
//!
//! Per add-on (`enclii-addon-<name>` in the environment's namespace, labelled
//! `dev.enclii.addon=<name>`): a seed `Secret`, a headless `Service`, a one-replica `StatefulSet`
//! with a `data` claim; logins change through admin `Job`s (`…-login`, `…-retire`), each reading
//! a `Secret` of its name, never through pod exec (see [`manifests::addon_objects`]).
//!
//! Routes changed without a deploy (`apply_routes`) rewrite the running tracks' Ingresses (and
//! the stable Ingress a pending promotion holds) from the same rendering a deploy uses.
//!
//! Before anything is applied, the workload's demand is checked against the environment's quota
//! ([`enclii_deploy_contract::Workload::check_quota`]); a deploy waits for its rollout and puts back what it changed
//! when the rollout does not become healthy in time.

pub mod config;
pub mod manifests;
pub mod target;

pub use config::KubernetesConfig;
pub use target::KubernetesTarget;
