//! Runtime logs: every replica pod's log, merged into one stream.

use enclii_deploy_contract::{DeployError, LogLines, LogRequest, LogStream, RuntimeLogLine, ServiceKey};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::LogParams;

use super::{KubernetesTarget, Result, api_error, is_bad_request, is_not_found};
use crate::manifests;

impl KubernetesTarget {
    pub(super) async fn runtime_logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        let ns = manifests::namespace_name(key);
        // The replicas: pods of the service's tracks (not its job runs).
        let selector = format!("{},{}", manifests::service_selector(key), manifests::LABEL_TRACK);
        let pods = self.api::<Pod>(&ns);
        let params = LogParams {
            follow: request.follow,
            tail_lines: Some(i64::from(request.tail)),
            timestamps: true,
            ..Default::default()
        };
        let mut streams = Vec::new();
        for pod in self.list::<Pod>(&ns, &selector).await? {
            let name = pod.name_any();
            let reader = match pods.log_stream(&name, &params).await {
                Ok(reader) => reader,
                // A pod gone (or not started) since the list has nothing to show.
                Err(e) if is_not_found(&e) || is_bad_request(&e) => continue,
                Err(e) => return Err(api_error(&format!("reading the log of Pod {ns}/{name}"), e)),
            };
            let replica = name.clone();
            let lines = reader.lines().map(move |line| match line {
                Ok(raw) => Ok(RuntimeLogLine::parse(&replica, LogStream::Combined, &raw)),
                Err(e) => Err(DeployError::kubernetes(
                    format!("reading the log of Pod {replica}: {e}"),
                    e,
                )),
            });
            streams.push(lines.boxed());
        }
        Ok(futures::stream::select_all(streams).boxed())
    }
}
