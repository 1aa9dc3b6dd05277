//! Tests of the Redis backend against the server on `REDIS_URL` (default `redis://127.0.0.1:6379`),
//! each under a key prefix of its own.

mod claims;
mod connection;
mod ids;
mod leases;
mod pipelines;
mod prune;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::connection::{maxmemory_policy, persistence, warn_if_evicting, warn_if_volatile};
use super::*;
use crate::backend::{Candidate, MAX_PROJECTS_PER_CLAIM, fair_quotas};
use crate::error::QueueError;
use crate::job::{JobPolicy, JobState, Outcome};
use crate::pipeline::{PipelineState, PipelineStep};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn random_prefix() -> String {
    format!("rhtest:{:016x}", rand::random::<u64>())
}

async fn queue() -> RedisQueue {
    RedisQueue::connect_with_prefix(&url(), &random_prefix())
        .await
        .expect("Redis at REDIS_URL (default redis://127.0.0.1:6379)")
}

async fn cleanup(q: &RedisQueue) {
    let mut con = q.con();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", q.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = ::redis::cmd("DEL").arg(&keys).query_async(&mut con).await.unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

fn request(kinds: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: "w1".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        limit,
        lease: Duration::from_secs(30),
    }
}

fn step(name: &str, needs: &[&str]) -> PipelineStep {
    PipelineStep {
        name: name.into(),
        job: NewJob::new(name, "p", json!({ "step": name })),
        needs: needs.iter().map(|s| s.to_string()).collect(),
    }
}

async fn complete(q: &RedisQueue, jobs: &[ClaimedJob]) {
    q.acknowledge(jobs.iter().map(|j| Ack::new(j, Outcome::Completed)).collect())
        .await
        .unwrap();
}

fn count(stats: &QueueStats, kind: &str, project: &str, state: JobState) -> u64 {
    stats
        .depth
        .iter()
        .find(|d| d.kind == kind && d.project == project && d.state == state)
        .map_or(0, |d| d.count)
}

fn pipeline(steps: Vec<PipelineStep>, supersede_key: Option<&str>) -> NewPipeline {
    NewPipeline {
        project: "p".into(),
        name: "t".into(),
        supersede_key: supersede_key.map(Into::into),
        unique_key: None,
        steps,
    }
}

fn state_of(record: &PipelineRecord, name: &str) -> JobState {
    record.steps.iter().find(|s| s.name == name).unwrap().state
}
