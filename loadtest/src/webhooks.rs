//! `webhooks`: signed GitHub `push` deliveries, each with its own delivery id and commit, sent over
//! HTTP on loopback to the API (in this process, on a fresh control-plane store) by `--concurrency`
//! clients on keep-alive connections. Every accepted delivery is one transaction: its delivery
//! row, a release, a build-and-deploy pipeline (6 jobs, superseding the service's previous one) and
//! the audit rows. After the run the rows are counted to check that every 202 was durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use enclii_domain::spec::{ServiceSpec, SpecFormat};
use enclii_store::{MasterKey, ServiceDraft, Store, StoreConfig, WebhookDelivery, WebhookIntent};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::env::Env;
use crate::meter::{percentiles, process_usage, round3};
use crate::{BackendKind, WebhookArgs, WebhookMode};

const SECRET: &str = "loadtest-webhook-secret";
const BRANCH: &str = "main";
/// Jobs in one build-and-deploy pipeline.
const STEPS: u64 = 6;

/// One prepared delivery.
struct Delivery {
    id: String,
    repo: usize,
    sha: String,
    body: Bytes,
    signature: String,
}

fn repo_name(k: usize) -> String {
    format!("repo{k:02}")
}

fn html_url(k: usize) -> String {
    format!("https://github.com/org/{}", repo_name(k))
}

/// Deliveries `range` of the run `run`, round-robin over `repos` repositories.
fn deliveries(run: u32, range: std::ops::Range<usize>, repos: usize, signed: bool) -> Vec<Delivery> {
    range
        .map(|i| {
            let k = i % repos;
            let sha = format!("{run:08x}{i:032x}");
            let before = format!("{:08x}{:032x}", !run, i);
            let name = repo_name(k);
            let body = json!({
                "ref": format!("refs/heads/{BRANCH}"),
                "before": before,
                "after": sha,
                "repository": {
                    "full_name": format!("org/{name}"),
                    "clone_url": format!("https://github.com/org/{name}.git"),
                    "html_url": html_url(k),
                },
            })
            .to_string();
            let key = if signed { SECRET } else { "not-the-secret" };
            let signature = format!(
                "sha256={}",
                enclii_auth::github_signature::hmac_sha256_hex(key.as_bytes(), body.as_bytes())
            );
            Delivery {
                // GUID-shaped, like GitHub's.
                id: format!(
                    "{run:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    (i >> 40) & 0xffff,
                    (i >> 28) & 0xfff,
                    (i >> 16) & 0xfff,
                    i
                ),
                repo: k,
                sha,
                body: Bytes::from(body),
                signature,
            }
        })
        .collect()
}

/// One project per repository (`bench-NN`), each with one service `web` deploying `main` to prod.
async fn setup(store: &Store, repos: usize) -> Result<()> {
    for k in 0..repos {
        let project = format!("bench-{k:02}");
        store
            .create_project("bench", &project, &format!("Bench {k}"))
            .await
            .with_context(|| format!("creating project {project}"))?;
        let yaml = format!(
            "apiVersion: enclii.dev/v1\nkind: Service\n\
             metadata: {{ project: {project}, environment: prod, name: web }}\n\
             spec:\n  source: {{ git: {{ repository: {}, branch: {BRANCH} }} }}\n",
            html_url(k)
        );
        let spec = ServiceSpec::parse(&yaml, SpecFormat::Yaml).map_err(|e| anyhow::anyhow!("bench spec: {e}"))?;
        let draft = ServiceDraft {
            project: project.clone(),
            name: "web".into(),
            environment: "prod".into(),
            repository: Some(enclii_domain::pipeline::repository_key(&html_url(k))),
            branch: Some(BRANCH.into()),
            spec: serde_json::to_string(&spec)?,
        };
        store
            .apply_service("bench", &draft, &[])
            .await
            .with_context(|| format!("creating service {project}/web"))?;
    }
    Ok(())
}

/// How the deliveries reach the store.
#[derive(Clone)]
enum Sender {
    Http {
        // Boxed: hyper's client grew with the TLS features other crates enable.
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        uri: hyper::Uri,
    },
    /// What the webhook handler does after parsing, without HTTP, JSON or HMAC.
    Store(Arc<Store>),
}

impl Sender {
    /// Sends one delivery; its status (HTTP status, or 202/200 for a direct call) and, for
    /// unexpected answers, the body.
    async fn send(&self, d: &Delivery) -> Result<(u16, Option<String>)> {
        match self {
            Sender::Http { client, uri } => {
                let request = hyper::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", &d.id)
                    .header("x-hub-signature-256", &d.signature)
                    .body(Full::new(d.body.clone()))?;
                let response = client.request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok((
                    status,
                    (status != 202).then(|| String::from_utf8_lossy(&body).into_owned()),
                ))
            }
            Sender::Store(store) => {
                let repository = enclii_domain::pipeline::repository_key(&html_url(d.repo));
                let outcome = store
                    .accept_webhook(&WebhookDelivery {
                        delivery_id: d.id.clone(),
                        event: "push".into(),
                        action: None,
                        intent: WebhookIntent::Push {
                            repository,
                            branch: BRANCH.into(),
                            sha: d.sha.clone(),
                            before: "0".repeat(40),
                            at_ms: None,
                        },
                    })
                    .await?;
                Ok(if outcome.duplicate {
                    (200, Some("duplicate".into()))
                } else {
                    (202, None)
                })
            }
        }
    }
}

/// Serves the API over `store` on a free loopback port in this process; cancel the token to stop
/// it, then await the handle.
pub async fn serve_api(
    store: Arc<Store>,
    config: enclii_api::ApiConfig,
) -> Result<(
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let app = enclii_api::router(enclii_api::AppState::new(store, enclii_api::metrics::install(), config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };
    Ok((addr, shutdown, server))
}

/// What one phase (warm-up or measured) observed.
struct Phase {
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    /// Answers other than 202, by status (0 = transport error).
    failures: std::collections::BTreeMap<u16, usize>,
    first_failure: Option<String>,
}

/// Sends `deliveries` with `concurrency` requests in flight.
async fn phase(sender: &Sender, deliveries: Arc<Vec<Delivery>>, concurrency: usize) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (sender, deliveries, next) = (sender.clone(), deliveries.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(deliveries.len() / concurrency.max(1) + 1);
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = deliveries.get(i) else { break };
                let sent = Instant::now();
                let result = sender.send(d).await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                match result {
                    Ok((202, _)) => {}
                    Ok((status, body)) => failures.push((status, body.unwrap_or_default())),
                    Err(e) => failures.push((0, format!("{e:#}"))),
                }
            }
            (latencies, failures)
        });
    }
    let mut out = Phase {
        elapsed: Duration::ZERO,
        latencies_ms: Vec::with_capacity(deliveries.len()),
        failures: Default::default(),
        first_failure: None,
    };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, failures) = joined.expect("a sender task panicked");
        out.latencies_ms.extend(latencies);
        for (status, body) in failures {
            *out.failures.entry(status).or_default() += 1;
            out.first_failure.get_or_insert_with(|| format!("{status}: {body}"));
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// CPU seconds (user + system) of every `postgres` process on this machine, when readable.
fn postgres_cpu_s() -> Option<f64> {
    let hz = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != "postgres" {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            ticks += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
            found = true;
        }
    }
    found.then(|| ticks as f64 / hz)
}

/// Row counts of the run's database that show what was made durable.
async fn count_rows(kind: BackendKind, url: &str) -> Result<Value> {
    const COUNTS: [(&str, &str); 5] = [
        ("webhook_deliveries", "SELECT count(*) FROM webhook_deliveries"),
        ("releases", "SELECT count(*) FROM releases"),
        ("pipelines", "SELECT count(*) FROM roundhouse_pipelines"),
        ("jobs", "SELECT count(*) FROM roundhouse_jobs"),
        (
            "pipelines_running",
            "SELECT count(*) FROM roundhouse_pipelines WHERE state = 'running'",
        ),
    ];
    let mut out = serde_json::Map::new();
    match kind {
        BackendKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            for (name, sql) in COUNTS {
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                out.insert(name.into(), json!(n));
            }
            let _ = conn.close().await;
        }
        BackendKind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await?;
            for (name, sql) in COUNTS {
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                out.insert(name.into(), json!(n));
            }
            let _ = conn.close().await;
        }
        BackendKind::Redis => unreachable!("rejected before the run"),
    }
    Ok(Value::Object(out))
}

/// Runs the workload in a fresh database and returns its fields.
pub async fn run(args: &WebhookArgs) -> Result<serde_json::Map<String, Value>> {
    if args.backend == BackendKind::Redis {
        bail!("the control plane lives in PostgreSQL or SQLite: use --backend postgres or sqlite");
    }
    let env = Env::create(args.backend, args.url.as_deref()).await?;
    let result = run_in(args, &env).await;
    env.destroy().await;
    result
}

async fn run_in(args: &WebhookArgs, env: &Env) -> Result<serde_json::Map<String, Value>> {
    let repos = args.repos.max(1);
    let concurrency = args.concurrency.max(1);
    let store = Arc::new(
        Store::open(StoreConfig {
            database_url: env.url.clone(),
            queue_url: None,
            max_connections: args.max_conns,
            master_key: MasterKey::generate(),
        })
        .await
        .context("opening the control-plane store")?,
    );
    setup(&store, repos).await?;

    let config = enclii_api::ApiConfig {
        webhook_secret: Some(SECRET.into()),
        webhook_rate_limit: enclii_api::auth::RateLimit {
            per_minute: 10_000_000,
            burst: 10_000_000,
        },
        ..Default::default()
    };
    let (addr, shutdown, server) = serve_api(store.clone(), config).await?;

    let sender = match args.mode {
        WebhookMode::Http | WebhookMode::BadSignature => {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(concurrency)
                .build(connector);
            Sender::Http {
                client: Box::new(client),
                uri: format!("http://{addr}/v1/webhooks/github").parse()?,
            }
        }
        WebhookMode::Store => Sender::Store(store.clone()),
    };
    let signed = args.mode != WebhookMode::BadSignature;
    let run = rand::random::<u32>();
    let warmup = Arc::new(deliveries(run, 0..args.warmup, repos, signed));
    let measured = Arc::new(deliveries(run, args.warmup..args.warmup + args.webhooks, repos, signed));

    let warm = phase(&sender, warmup, concurrency).await;
    let (cpu_before, _) = process_usage();
    let pg_before = postgres_cpu_s();
    let main = phase(&sender, measured, concurrency).await;
    let (cpu_after, _) = process_usage();
    let pg_after = postgres_cpu_s();

    shutdown.cancel();
    drop(sender);
    server.await.context("the HTTP server panicked")??;
    let sent = args.warmup + args.webhooks;
    let expect_rows = if signed { sent } else { 0 };
    let rows = count_rows(env.kind, &env.url).await.context("counting the rows")?;
    drop(store);

    let n = args.webhooks;
    let secs = main.elapsed.as_secs_f64();
    let non_202: usize = main.failures.values().sum();
    let warm_non_202: usize = warm.failures.values().sum();
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round3(b - a));
    let per_webhook_us = |cpu: Option<f64>| cpu.map(|c| (c * 1e6 / n.max(1) as f64).round());
    let app_cpu = cpu(cpu_before, cpu_after);
    let pg_cpu = if env.kind == BackendKind::Postgres {
        cpu(pg_before, pg_after)
    } else {
        None
    };
    let durable = rows["webhook_deliveries"] == json!(expect_rows)
        && rows["releases"] == json!(expect_rows)
        && rows["pipelines"] == json!(expect_rows)
        && rows["jobs"] == json!(expect_rows as u64 * STEPS);
    let [p50, p95, p99, max] = percentiles(main.latencies_ms);
    let mode = match args.mode {
        WebhookMode::Http => "http",
        WebhookMode::Store => "store (no HTTP: the handler's store call)",
        WebhookMode::BadSignature => "http, bad signatures (401 after the HMAC check, no database)",
    };
    let out = json!({
        "n": n,
        "concurrency": concurrency,
        "webhooks_per_s": (secs > 0.0).then(|| round3(n as f64 / secs)),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": max,
        "non_202": non_202,
        "non_202_by_status": main.failures,
        "first_non_202": main.first_failure,
        "warmup": args.warmup,
        "warmup_non_202": warm_non_202,
        "measured_s": round3(secs),
        "latency": "request sent -> full response received (client side)",
        "mode": mode,
        "repos": repos,
        "max_conns": args.max_conns,
        "rows": rows,
        "rows_expected": expect_rows,
        "durable": durable,
        "measured_cpu_s": app_cpu,
        "measured_pg_cpu_s": pg_cpu,
        "cpu_us_per_webhook": per_webhook_us(app_cpu),
        "pg_cpu_us_per_webhook": per_webhook_us(pg_cpu),
    });
    match out {
        Value::Object(map) => Ok(map),
        _ => unreachable!(),
    }
}
