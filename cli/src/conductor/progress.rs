//! Waiting for a build and a deployment: each pipeline step as its state changes and the live
//! log of running steps (SSE), why the release waits when no worker can run its next step, then
//! the deployment's status, all on stderr; a deadline (`--timeout`) turns into exit code 40, a
//! failed build into 20, a failed deployment into 30.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{Client, segment};
use super::output::{items, printable};
use super::{Failure, exit};

const POLL: Duration = Duration::from_millis(700);

pub struct Waiter {
    client: Client,
    progress: bool,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    streams: Vec<JoinHandle<()>>,
    streamed: HashSet<i64>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        for stream in &self.streams {
            stream.abort();
        }
    }
}

impl Waiter {
    pub fn new(client: &Client, progress: bool, timeout: Option<Duration>) -> Self {
        Waiter {
            client: client.clone(),
            progress,
            // A deadline past the clock's end is no deadline.
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            timeout,
            streams: Vec::new(),
            streamed: HashSet::new(),
        }
    }

    /// A progress line on stderr; it quotes the server's text (errors, details), so made printable.
    fn say(&self, line: &str) {
        if self.progress {
            eprintln!("{}", printable(line));
        }
    }

    fn timed_out(&self, what: &str) -> Failure {
        Failure::new(
            exit::TIMEOUT,
            format!(
                "timed out after {} s waiting for {what}",
                self.timeout.unwrap_or_default().as_secs()
            ),
        )
        .hint("it goes on on the server: watch it with `enclii ps`, or wait longer with --timeout")
    }

    fn check_deadline(&self, what: &str) -> Result<(), Failure> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.timed_out(what)),
            _ => Ok(()),
        }
    }

    /// A GET that ends by the deadline (a slow answer must not outlast --timeout).
    async fn get(&self, path: &str, query: &[(&str, String)], what: &str) -> Result<Value, Failure> {
        let call = self.client.get_query(path, query);
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .map_err(|_| self.timed_out(what))?,
            None => call.await,
        }
    }

    /// Sleeps one poll interval, or until the deadline.
    async fn pause(&self) {
        let next = Instant::now() + POLL;
        tokio::time::sleep_until(self.deadline.map_or(next, |d| d.min(next))).await;
    }

    /// Streams a job's live log to stderr (once per job), until the job ends.
    fn stream_log(&mut self, job: i64, label: &str) {
        if !self.progress || !self.streamed.insert(job) {
            return;
        }
        let client = self.client.clone();
        let label = label.to_string();
        self.streams.push(tokio::spawn(async move {
            let path = format!("/v1/jobs/{job}/logs/stream");
            let _ = client
                .events(&path, &[], |event| {
                    if event.event == "line" {
                        let line: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                        if let Some(text) = line["line"].as_str() {
                            eprintln!("  {label} │ {}", printable(text));
                        }
                    }
                    event.event != "end"
                })
                .await;
        }));
    }

    /// Follows release `id`'s pipeline until the release is `ready` (returned) or not.
    pub async fn build(&mut self, release: i64, pipeline: i64) -> Result<Value, Failure> {
        let mut states: HashMap<String, String> = HashMap::new();
        let mut waiting: Option<String> = None;
        loop {
            let what = format!("release {release} to build");
            if pipeline > 0
                && let Ok(run) = self.get(&format!("/v1/pipelines/{pipeline}"), &[], &what).await
            {
                for step in items(&run["steps"]) {
                    let name = step["name"].as_str().unwrap_or("?").to_string();
                    let state = step["state"].as_str().unwrap_or("?").to_string();
                    if states.get(&name) != Some(&state) {
                        let error = step["last_error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        self.say(&format!("• {name:<8} {state}{error}"));
                        states.insert(name.clone(), state.clone());
                    }
                    if state == "running"
                        && let Some(job) = step["job"].as_i64()
                    {
                        self.stream_log(job, &name);
                    }
                }
            }
            let record = self.get(&format!("/v1/releases/{release}"), &[], &what).await?;
            // A ready release's own reason (its deploy step waits) is the deployment wait's to say.
            if record["status"] == "building" {
                self.say_waiting(&record, &mut waiting);
            }
            match record["status"].as_str().unwrap_or("") {
                "ready" => {
                    self.say(&format!(
                        "✓ release {release} ready: {}",
                        record["image"].as_str().unwrap_or("")
                    ));
                    return Ok(record);
                }
                "building" => {}
                status => {
                    let why = record["failure"].as_str().unwrap_or("no reason recorded");
                    return Err(
                        Failure::new(exit::BUILD, format!("release {release} {status}: {why}")).hint(format!(
                            "see its steps and logs with `curl …/v1/releases/{release}`, fix the commit and run again"
                        )),
                    );
                }
            }
            self.check_deadline(&what)?;
            self.pause().await;
        }
    }

    /// Says why the release does not move (the API's `waiting`: no worker can run its next step)
    /// once, and again when the reason changes.
    fn say_waiting(&self, record: &Value, last: &mut Option<String>) {
        let now = record["waiting"].as_str();
        if let Some(reason) = now
            && last.as_deref() != Some(reason)
        {
            self.say(&format!("• {reason}"));
        }
        *last = now.map(str::to_string);
    }

    /// The deployment of `release` in `environment` (made by the pipeline's deploy step), once
    /// it exists.
    pub async fn deployment_of(
        &mut self,
        project: &str,
        service: &str,
        release: i64,
        environment: &str,
    ) -> Result<Value, Failure> {
        let path = format!("/v1/projects/{}/deployments", segment(project));
        let what = format!("release {release} to start deploying");
        let mut waiting = None;
        loop {
            let list = self
                .get(
                    &path,
                    &[("service", service.to_string()), ("limit", "20".into())],
                    &what,
                )
                .await?;
            let found = items(&list)
                .find(|d| d["release_id"].as_i64() == Some(release) && d["environment"].as_str() == Some(environment));
            if let Some(deployment) = found {
                return Ok(deployment.clone());
            }
            // No deployment yet: its deploy step may wait for a worker that can run it.
            let record = self.get(&format!("/v1/releases/{release}"), &[], &what).await?;
            self.say_waiting(&record, &mut waiting);
            self.check_deadline(&what)?;
            self.pause().await;
        }
    }

    /// Follows deployment `id` until it ends: `succeeded` is returned, anything else fails (30).
    pub async fn deployment(&mut self, id: i64) -> Result<Value, Failure> {
        let mut last = String::new();
        let what = format!("deployment {id}");
        loop {
            let deployment = self.get(&format!("/v1/deployments/{id}"), &[], &what).await?;
            let status = deployment["status"].as_str().unwrap_or("?").to_string();
            let detail = deployment["detail"].as_str().unwrap_or("");
            let line = match deployment["canary_percent"].as_i64() {
                Some(p) if status == "canary" => format!("{status} {p}% {detail}"),
                _ => format!("{status} {detail}"),
            };
            if line != last {
                self.say(&format!("• deploy   {}", line.trim_end()));
                last = line;
            }
            if status == "running"
                && let Some(job) = deployment["job_id"].as_i64()
            {
                self.stream_log(job, "deploy");
            }
            match status.as_str() {
                "pending" | "running" | "canary" => {}
                "succeeded" => return Ok(deployment),
                other => {
                    let why = if detail.is_empty() {
                        "no reason recorded"
                    } else {
                        detail
                    };
                    return Err(Failure::new(exit::DEPLOY, format!("deployment {id} {other}: {why}"))
                        .hint("the previous release keeps serving; fix the cause and deploy again"));
                }
            }
            self.check_deadline(&what)?;
            self.pause().await;
        }
    }
}
