//! Prometheus exposition: the process's counters and histograms (recorded by the worker pool),
//! plus queue depth and oldest-job age gauges refreshed from the backend at scrape time.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use enclii_queue::{Backend, QueueStats};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Label sets of the depth gauge seen at the previous scrape, so vanished ones drop to zero.
#[derive(Default)]
pub struct DepthGauges {
    seen: Mutex<HashSet<(String, String, &'static str)>>,
    seen_kinds: Mutex<HashSet<String>>,
}

impl DepthGauges {
    pub async fn refresh(&self, backend: &dyn Backend) -> enclii_queue::Result<()> {
        let QueueStats {
            depth,
            oldest_available_seconds,
        } = backend.stats().await?;
        let mut now = HashSet::new();
        for row in depth {
            let labels = (row.kind, row.project, row.state.as_str());
            metrics::gauge!("enclii_queue_depth", "kind" => labels.0.clone(), "project" => labels.1.clone(), "state" => labels.2)
                .set(row.count as f64);
            now.insert(labels);
        }
        let mut seen = self.seen.lock().expect("depth labels");
        for (kind, project, state) in seen.difference(&now) {
            metrics::gauge!("enclii_queue_depth", "kind" => kind.clone(), "project" => project.clone(), "state" => *state)
                .set(0.0);
        }
        *seen = now;
        let mut kinds = HashSet::new();
        for (kind, age) in oldest_available_seconds {
            metrics::gauge!("enclii_queue_oldest_available_seconds", "kind" => kind.clone()).set(age);
            kinds.insert(kind);
        }
        let mut seen_kinds = self.seen_kinds.lock().expect("kind labels");
        for kind in seen_kinds.difference(&kinds) {
            metrics::gauge!("enclii_queue_oldest_available_seconds", "kind" => kind.clone()).set(0.0);
        }
        *seen_kinds = kinds;
        Ok(())
    }
}
