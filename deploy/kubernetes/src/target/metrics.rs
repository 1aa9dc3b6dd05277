//! Canary metrics from Prometheus (ingress-nginx's series, see [`metric_queries`]) and usage
//! from metrics-server's pod metrics and the volumes' claims.

use std::time::Duration;

use enclii_deploy_contract::{DeployError, ReleaseMetrics, ServiceKey, Usage};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::{KubernetesTarget, Result, api_error, release_of};
use crate::manifests;

impl KubernetesTarget {
    fn prometheus(&self) -> Result<reqwest::Client> {
        if let Some(client) = self.prometheus.get() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DeployError::metrics(format!("cannot build the HTTP client: {e}"), e))?;
        Ok(self.prometheus.get_or_init(|| client).clone())
    }

    /// One instant query: the first sample's value, `None` for an empty result or NaN.
    async fn query(&self, base: &str, promql: &str) -> Result<Option<f64>> {
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let response = self
            .prometheus()?
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| DeployError::metrics(format!("Prometheus at {base}: {e}"), e))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| DeployError::metrics(format!("Prometheus at {base} answered {status}: {e}"), e))?;
        if body["status"] != "success" {
            return Err(DeployError::metrics_message(format!(
                "Prometheus at {base} rejected `{promql}`: {}",
                body["error"].as_str().unwrap_or("no error message")
            )));
        }
        Ok(body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite()))
    }

    /// The Service name serving `release` (stable or canary), from the Deployments' labels.
    async fn serving_name(&self, key: &ServiceKey, release: i64) -> Result<String> {
        let ns = manifests::namespace_name(key);
        let deployments = self.list::<Deployment>(&ns, &manifests::service_selector(key)).await?;
        deployments
            .iter()
            .find(|d| release_of(d) == Some(release))
            .map(|d| d.name_any())
            .ok_or_else(|| DeployError::NotFound(format!("release {release} of {key} is not running")))
    }

    pub(super) async fn release_metrics_of(
        &self,
        key: &ServiceKey,
        release: i64,
        window: Duration,
    ) -> Result<ReleaseMetrics> {
        let Some(base) = self.config.prometheus_url.clone() else {
            return Err(DeployError::metrics_message(
                "no Prometheus configured for the Kubernetes target: set its URL (prometheus_url, e.g. \
                 ENCLII_PROMETHEUS_URL=http://prometheus.monitoring:9090) to analyse canaries",
            ));
        };
        let service = self.serving_name(key, release).await?;
        let queries = metric_queries(&manifests::namespace_name(key), &service, window);
        let requests = self.query(&base, &queries.requests).await?.unwrap_or(0.0);
        let errors = self.query(&base, &queries.errors).await?.unwrap_or(0.0);
        let p95 = self.query(&base, &queries.p95).await?;
        Ok(ReleaseMetrics {
            requests: requests.round() as u64,
            errors: errors.round() as u64,
            p95: p95.filter(|_| requests >= 0.5).map(Duration::from_secs_f64),
        })
    }

    pub(super) async fn pod_usage(&self, key: &ServiceKey) -> Result<Usage> {
        let ns = manifests::namespace_name(key);
        let selector = manifests::service_selector(key);
        let pod_metrics = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let metrics = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &pod_metrics)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                api_error(
                    &format!("reading pod metrics in {ns} (is metrics-server installed?)"),
                    e,
                )
            })?;
        let mut usage = Usage {
            replicas: u32::try_from(metrics.items.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        for pod in &metrics.items {
            for container in pod.data["containers"].as_array().into_iter().flatten() {
                usage.cpu_millis += container["usage"]["cpu"].as_str().map_or(0.0, cpu_millis);
                usage.memory_bytes += container["usage"]["memory"].as_str().map_or(0, memory_bytes);
            }
        }
        for claim in self.list::<PersistentVolumeClaim>(&ns, &selector).await? {
            usage.volume_bytes += claim_bytes(&claim);
        }
        Ok(usage)
    }
}

/// The PromQL of a canary analysis, over ingress-nginx's metrics of one backend Service.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricQueries {
    pub requests: String,
    pub errors: String,
    pub p95: String,
}

pub fn metric_queries(namespace: &str, service: &str, window: Duration) -> MetricQueries {
    let secs = window.as_secs().max(1);
    let selector = format!(r#"exported_namespace="{namespace}",exported_service="{service}""#);
    MetricQueries {
        requests: format!("sum(increase(nginx_ingress_controller_requests{{{selector}}}[{secs}s]))"),
        errors: format!(r#"sum(increase(nginx_ingress_controller_requests{{{selector},status=~"5.."}}[{secs}s]))"#),
        p95: format!(
            "histogram_quantile(0.95, sum by (le) (rate(nginx_ingress_controller_request_duration_seconds_bucket{{{selector}}}[{secs}s])))"
        ),
    }
}

/// A CPU quantity as metrics-server writes it (`12345678n`, `250u`, `5m`, `1`) in millicores.
pub fn cpu_millis(quantity: &str) -> f64 {
    let (number, scale) = if let Some(n) = quantity.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = quantity.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = quantity.strip_suffix('m') {
        (n, 1.0)
    } else {
        (quantity, 1e3)
    };
    number.parse::<f64>().map_or(0.0, |n| n * scale)
}

fn memory_bytes(quantity: &str) -> u64 {
    enclii_domain::spec::parse_memory_bytes(quantity).unwrap_or(0)
}

fn claim_bytes(claim: &PersistentVolumeClaim) -> u64 {
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let requested = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    capacity.or(requested).map_or(0, |q| memory_bytes(&q.0))
}
