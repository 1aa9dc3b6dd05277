//! `operators`: how fast the operators' queue views answer on a busy queue. The run fills a fresh
//! store with `--jobs` jobs over 8 projects — 76% completed and 4% dead within the last minutes,
//! 20% waiting — then asks the API (in this process, over HTTP on loopback) each view `--requests`
//! times, one at a time: `/v1/queue/stats`, `/v1/queue/jobs?state=dead`, `/v1/queue/throughput`
//! (15 minutes), `/v1/queue/workers`, and the time to the first event of a newly opened
//! `/v1/queue/stream` (a full snapshot of all of them). The product's target: a metrics query
//! answers within 1 s at P95.
//!
//! Redis holds only the queue: the control plane stays in a fresh PostgreSQL database, and the
//! queue goes to Redis database 7 (flushed before and after — do not point `--redis-url` at a
//! database you use).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use enclii_queue::{Ack, ClaimRequest, NewJob, Outcome};
use enclii_store::{MasterKey, Store, StoreConfig, TokenRecord};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::env::Env;
use crate::meter::{percentiles, round3};
use crate::webhooks::serve_api;
use crate::{BackendKind, OperatorArgs};

const PROJECTS: usize = 8;
const VIEWS: [(&str, &str); 4] = [
    ("stats", "/v1/queue/stats"),
    ("dead_jobs", "/v1/queue/jobs?state=dead&limit=50"),
    ("throughput", "/v1/queue/throughput?minutes=15"),
    ("workers", "/v1/queue/workers"),
];

pub async fn run(args: &OperatorArgs) -> Result<serde_json::Map<String, Value>> {
    // The control plane needs SQL; with `--backend redis` the queue alone moves to Redis.
    let sql = if args.backend == BackendKind::Sqlite {
        BackendKind::Sqlite
    } else {
        BackendKind::Postgres
    };
    let env = Env::create(sql, args.url.as_deref()).await?;
    let result = run_in(args, &env).await;
    env.destroy().await;
    result
}

async fn flush_redis(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(())
}

async fn run_in(args: &OperatorArgs, env: &Env) -> Result<serde_json::Map<String, Value>> {
    let queue_url = (args.backend == BackendKind::Redis).then(|| format!("{}/7", args.redis_url.trim_end_matches('/')));
    if let Some(url) = &queue_url {
        flush_redis(url).await?;
    }
    let store = Arc::new(
        Store::open(StoreConfig {
            database_url: env.url.clone(),
            queue_url: queue_url.clone(),
            max_connections: 16,
            master_key: MasterKey::generate(),
        })
        .await
        .context("opening the store")?,
    );
    let token = enclii_auth::token::generate();
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash.clone(),
        subject: "user:admin".into(),
        name: "loadtest".into(),
        scopes: json!(["read"]).to_string(),
        project: None,
        created_at: chrono::Utc::now().timestamp_millis(),
        expires_at: None,
        revoked_at: None,
    };
    store.bootstrap("user:admin", "Owner", &record).await?;
    let fill = Instant::now();
    fill_queue(&store, args.jobs).await?;
    let fill_s = fill.elapsed().as_secs_f64();

    let config = enclii_api::ApiConfig {
        rate_limit: enclii_api::auth::RateLimit {
            per_minute: 10_000_000,
            burst: 10_000_000,
        },
        ..Default::default()
    };
    let (addr, shutdown, server) = serve_api(store.clone(), config).await?;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let bearer = format!("Bearer {}", token.plaintext);
    let request = |path: &str| {
        hyper::Request::get(format!("http://{addr}{path}"))
            .header("authorization", &bearer)
            .body(Empty::<Bytes>::new())
    };

    let mut fields = serde_json::Map::new();
    fields.insert("backend".into(), json!(args.backend.as_str()));
    fields.insert("jobs".into(), json!(args.jobs));
    fields.insert("fill_s".into(), json!(round3(fill_s)));
    for (name, path) in VIEWS {
        let mut times = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let started = Instant::now();
            let response = client.request(request(path)?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!("{path} answered {status}: {}", String::from_utf8_lossy(&body));
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        fields.insert(format!("{name}_ms"), latency(times));
    }
    // A new watcher: from opening the stream to its first snapshot (a fresh snapshot loop each
    // time, because the previous watcher left).
    let mut times = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let started = Instant::now();
        let response = client.request(request("/v1/queue/stream")?).await?;
        let mut body = response.into_body();
        let mut seen = String::new();
        while !seen.contains("event: snapshot") {
            let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
                .await
                .context("no snapshot within 30 s")?
                .context("the stream ended")??;
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(body);
        // Let the producer notice that its last watcher left.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    fields.insert("stream_first_snapshot_ms".into(), latency(times));

    shutdown.cancel();
    server.await.context("the HTTP server panicked")??;
    if let Some(url) = &queue_url {
        flush_redis(url).await?;
    }
    Ok(fields)
}

fn latency(times: Vec<f64>) -> Value {
    let [p50, p95, _, max] = percentiles(times);
    json!({"p50": p50.map(round3), "p95": p95.map(round3), "max": max.map(round3)})
}

/// Enqueues `jobs` over 8 projects, then claims and finishes 80% of them (1 in 20 dead).
async fn fill_queue(store: &Store, jobs: usize) -> Result<()> {
    let queue = store.queue();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|i| NewJob::new("ping", format!("project-{}", i % PROJECTS), json!({})))
            .collect();
        queue.enqueue(batch).await?;
    }
    let to_finish = jobs * 4 / 5;
    let mut finished = 0;
    while finished < to_finish {
        let claimed = queue
            .claim(&ClaimRequest {
                worker: "loadtest-operators".into(),
                kinds: vec!["ping".into()],
                limit: (to_finish - finished).min(2_000),
                lease: Duration::from_secs(600),
            })
            .await?;
        if claimed.is_empty() {
            bail!("the queue stopped handing out jobs after {finished}");
        }
        let acks = claimed
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let outcome = if (finished + i) % 20 == 0 {
                    Outcome::Dead {
                        error: "loadtest: dead on purpose".into(),
                    }
                } else {
                    Outcome::Completed
                };
                Ack::new(job, outcome)
            })
            .collect();
        finished += claimed.len();
        queue.acknowledge(acks).await?;
    }
    Ok(())
}
