//! Trace context through the queue: a job enqueued inside a traced scope carries `_trace`, its
//! handler runs inside that trace (a child span of it), a typed `deny_unknown_fields` payload
//! still decodes, and the jobs a handler enqueues join the same trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use enclii_queue::trace::{self, TraceContext};
use enclii_queue::{Backend, JobKind, JobPolicy, JobState, NewJob};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[path = "../../queue/tests/common/mod.rs"]
mod common;

/// A strict payload, like every kind in `enclii_domain::jobs`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hop {
    n: u32,
}

impl JobKind for Hop {
    const KIND: &'static str = "hop";
    fn policy() -> JobPolicy {
        JobPolicy {
            max_attempts: 1,
            ..JobPolicy::default()
        }
    }
}

/// What each run saw: the decoded `n`, the current trace, and the job's own `_trace`.
type Seen = Arc<Mutex<Vec<(u32, Option<TraceContext>, Option<TraceContext>)>>>;

/// Notes what it saw; the first hop enqueues the second from inside the handler (as the deploy
/// handler enqueues `canary-analyze`).
struct Hopper {
    backend: Arc<dyn Backend>,
    seen: Seen,
}

#[async_trait]
impl TypedHandler<Hop> for Hopper {
    async fn handle(&self, job: Hop, ctx: &JobContext) -> Result<(), JobError> {
        self.seen
            .lock()
            .unwrap()
            .push((job.n, trace::current(), trace::from_payload(&ctx.job.payload)));
        if job.n == 1 {
            let next = NewJob::typed(&ctx.job.project, &Hop { n: 2 }).map_err(JobError::abort)?;
            self.backend.enqueue(vec![next]).await.map_err(JobError::retry)?;
        }
        Ok(())
    }
}

fn config() -> WorkerConfig {
    WorkerConfig {
        poll_every: Duration::from_millis(50),
        ..WorkerConfig::with_concurrency(2)
    }
}

async fn wait_for(seen: &Seen, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_jobs_through_the_queue_and_the_jobs_they_enqueue() {
    let q = common::sqlite().await;
    let root = TraceContext::new_root();
    let first = trace::scope(root, async {
        let job = NewJob::typed("p", &Hop { n: 1 }).unwrap();
        assert_eq!(job.payload["_trace"], root.to_string());
        q.enqueue(vec![job]).await.unwrap()[0].id
    })
    .await;
    // Stored as part of the payload, by the backend as it is.
    let stored = q.job(first).await.unwrap().unwrap();
    assert_eq!(trace::from_payload(&stored.payload), Some(root));

    let seen: Seen = Arc::default();
    let mut registry = Registry::new();
    registry.register_typed::<Hop, _>(Hopper {
        backend: q.clone(),
        seen: seen.clone(),
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(q.clone(), registry, config()).run(stop.clone()));
    wait_for(&seen, 2).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    let (n, current, carried) = seen[0];
    assert_eq!(n, 1, "the typed payload decoded despite `_trace`");
    assert_eq!(carried, Some(root));
    let current = current.expect("the handler runs inside a trace");
    assert_eq!(current.trace_id, root.trace_id, "the same trace");
    assert_ne!(current.span_id, root.span_id, "the job is a span of its own");

    let (n, second, carried) = seen[1];
    assert_eq!(n, 2);
    assert_eq!(
        carried,
        Some(current),
        "a job enqueued by a handler is a child of that job's span"
    );
    assert_eq!(second.unwrap().trace_id, root.trace_id);

    let all = enclii_queue::JobFilter {
        limit: 10,
        ..Default::default()
    };
    let jobs = q.list_jobs(&all).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.state == JobState::Completed), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_trace_starts_one() {
    let q = common::sqlite().await;
    let job = NewJob::typed("p", &Hop { n: 7 }).unwrap();
    assert!(job.payload.get("_trace").is_none(), "no scope, no trace");
    q.enqueue(vec![job]).await.unwrap();
    // A malformed `_trace` (hand-written through the API) is ignored, not fatal.
    let mut bad = NewJob::typed("p", &Hop { n: 8 }).unwrap();
    bad.payload["_trace"] = "00-nonsense".into();
    q.enqueue(vec![bad]).await.unwrap();

    let seen: Seen = Arc::default();
    let mut registry = Registry::new();
    registry.register_typed::<Hop, _>(Hopper {
        backend: q.clone(),
        seen: seen.clone(),
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(q.clone(), registry, config()).run(stop.clone()));
    wait_for(&seen, 2).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    let roots: Vec<TraceContext> = seen.iter().map(|(_, current, _)| current.unwrap()).collect();
    assert_eq!(roots.len(), 2);
    assert_ne!(roots[0].trace_id, roots[1].trace_id, "two new traces");
}
