//! What runs, read back from the engine: resource usage for cost samples (one-shot stats per
//! replica) and the replicas' runtime logs.

use bollard::container::LogOutput;
use bollard::query_parameters::{LogsOptionsBuilder, StatsOptionsBuilder};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{LogLines, LogRequest, LogStream, RuntimeLogLine, ServiceKey, Usage};
use futures::StreamExt;

use crate::engine::{DockerTarget, is_not_found};

impl DockerTarget {
    pub(crate) async fn sample_usage(&self, key: &ServiceKey) -> Result<Usage> {
        let mut usage = Usage {
            volume_bytes: self
                .volume_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .copied()
                .unwrap_or(0),
            cpu_counter_ns: Some(0),
            egress_counter_bytes: Some(0),
            ..Usage::default()
        };
        for (name, _, running) in self.containers(key, None).await? {
            if !running {
                continue;
            }
            let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
            let Some(Ok(stats)) = self.docker.stats(&name, Some(options)).next().await else {
                continue;
            };
            usage.replicas += 1;
            let cpu = stats
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0);
            usage.cpu_counter_ns = usage.cpu_counter_ns.map(|n| n + cpu);
            usage.memory_bytes += stats.memory_stats.and_then(|m| m.usage).unwrap_or(0);
            let sent: u64 = stats
                .networks
                .unwrap_or_default()
                .values()
                .filter_map(|n| n.tx_bytes)
                .sum();
            usage.egress_counter_bytes = usage.egress_counter_bytes.map(|n| n + sent);
        }
        Ok(usage)
    }

    pub(crate) async fn replica_logs(&self, key: &ServiceKey, request: LogRequest) -> Result<LogLines> {
        let mut streams = Vec::new();
        for (name, _, _) in self.containers(key, None).await? {
            let options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .follow(request.follow)
                .tail(&request.tail.to_string())
                .build();
            let replica = name.clone();
            let lines = self.docker.logs(&name, Some(options)).flat_map(move |chunk| {
                let lines: Vec<Result<RuntimeLogLine>> = match chunk {
                    Ok(output) => {
                        let (stream, bytes) = match output {
                            LogOutput::StdErr { message } => (LogStream::Stderr, message),
                            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                                (LogStream::Stdout, message)
                            }
                            LogOutput::StdIn { .. } => return futures::stream::iter(Vec::new()),
                        };
                        String::from_utf8_lossy(&bytes)
                            .lines()
                            .map(|raw| Ok(RuntimeLogLine::parse(&replica, stream, raw)))
                            .collect()
                    }
                    // A replica removed while it is read ends its part of the stream.
                    Err(e) if is_not_found(&e) => Vec::new(),
                    Err(e) => vec![Err(DeployError::docker(
                        format!("reading the log of {replica}: {e}"),
                        e,
                    ))],
                };
                futures::stream::iter(lines)
            });
            streams.push(lines.boxed());
        }
        Ok(futures::stream::select_all(streams).boxed())
    }
}
