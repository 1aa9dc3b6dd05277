//! Why a `building` release does not move — or, asked about one release, a `ready` one whose
//! deploy step has not started: a step of its run waits to be claimed (available or scheduled)
//! and no alive worker handles that step's kind. The answer names the kind and the
//! reason an alive worker gave for not running it (its heartbeat's `unavailable`), or says that
//! no worker runs at all, or that none handles the kind.
//!
//! One answer reads the workers at most once, and only when a release it shows has a step
//! waiting to be claimed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use enclii_queue::{JobKind, JobState, PipelineRecord};
use enclii_store::{Release, ReleaseStatus, WorkerRecord};

use crate::error::ApiError;
use crate::operators::{is_alive, recent_workers};
use crate::state::AppState;
use crate::views;

/// What one alive worker said it runs and cannot run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Alive {
    kinds: BTreeSet<String>,
    unavailable: BTreeMap<String, String>,
}

/// What the alive workers can run, from their heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    alive: Vec<Alive>,
}

/// Why no alive worker runs a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stall {
    /// No worker process is alive.
    NoWorker,
    /// An alive worker cannot run it, for this reason.
    Unavailable(String),
    /// Workers are alive, but none handles the kind.
    Unhandled,
}

/// A release's run waits on a step of `kind` that no alive worker can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub kind: String,
    pub stall: Stall,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = &self.kind;
        write!(f, "waiting: no worker can run {kind} (")?;
        match &self.stall {
            Stall::NoWorker => f.write_str("no worker is running; start `enclii server` with the worker role")?,
            Stall::Unavailable(reason) => f.write_str(reason)?,
            Stall::Unhandled => write!(f, "no worker handles {kind}")?,
        }
        f.write_str(")")
    }
}

impl Capacity {
    /// The alive workers among `records` at `now` (a heartbeat's unreadable JSON counts as empty).
    pub fn of_workers(records: &[WorkerRecord], now: i64) -> Self {
        let alive = records
            .iter()
            .filter(|w| is_alive(w, now))
            .map(|w| Alive {
                kinds: serde_json::from_str(&w.kinds).unwrap_or_default(),
                unavailable: serde_json::from_str(&w.unavailable).unwrap_or_default(),
            })
            .collect();
        Capacity { alive }
    }

    /// Why no alive worker runs `kind`; `None` when one does.
    pub fn stall(&self, kind: &str) -> Option<Stall> {
        if self.alive.is_empty() {
            return Some(Stall::NoWorker);
        }
        if self.alive.iter().any(|w| w.kinds.contains(kind)) {
            return None;
        }
        let reason = self.alive.iter().find_map(|w| w.unavailable.get(kind));
        Some(reason.map_or(Stall::Unhandled, |r| Stall::Unavailable(r.clone())))
    }
}

/// The steps of `run` that wait to be claimed (not those waiting for the steps they need).
fn claimable(run: &PipelineRecord) -> impl Iterator<Item = &str> {
    run.steps
        .iter()
        .filter(|s| matches!(s.state, JobState::Available | JobState::Scheduled))
        .map(|s| s.kind.as_str())
}

/// The first step of `run` whose kind `counts`, waiting to be claimed, that no alive worker can
/// run.
fn waiting_among(run: &PipelineRecord, capacity: &Capacity, counts: impl Fn(&str) -> bool) -> Option<Waiting> {
    claimable(run).filter(|kind| counts(kind)).find_map(|kind| {
        capacity.stall(kind).map(|stall| Waiting {
            kind: kind.to_string(),
            stall,
        })
    })
}

/// `release` with its waiting reason. The reason is advice: when the queue or the workers cannot
/// be read, the release is shown without it (and a warning logged) rather than not at all.
fn shown(release: Release, waiting: Result<Option<String>, ApiError>) -> views::Release {
    let waiting = waiting.unwrap_or_else(|e| {
        tracing::warn!(error = %e, release = release.id, "cannot tell why the release waits");
        None
    });
    views::Release {
        waiting,
        ..release.into()
    }
}

/// Finds the waiting reasons of the releases of one answer; reads the workers at most once.
pub struct Lookup<'a> {
    state: &'a AppState,
    capacity: Option<Capacity>,
}

impl<'a> Lookup<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Lookup { state, capacity: None }
    }

    /// The release's own run: a queue that lost its data hands pipeline ids out again, so a run
    /// with the release's `pipeline_id` that builds another release is not its run. `None` once
    /// pruned.
    pub async fn own_run(&self, release: &Release) -> Result<Option<PipelineRecord>, ApiError> {
        let Some(id) = release.pipeline_id else {
            return Ok(None);
        };
        let Some(run) = self.state.backend.pipeline(id).await? else {
            return Ok(None);
        };
        let ours = self
            .state
            .store
            .release_of_pipeline(&run)
            .await?
            .is_some_and(|r| r.id == release.id);
        Ok(ours.then_some(run))
    }

    /// Why `release`, whose own run is `run`, does not move; `None` unless it is `building` — or
    /// `ready` with its deploy step still to come — with a step no alive worker can run.
    pub async fn of_run(
        &mut self,
        release: &Release,
        run: Option<&PipelineRecord>,
    ) -> Result<Option<String>, ApiError> {
        self.of_run_after(release, run, false).await
    }

    /// [`Lookup::of_run`]; with `deploy_too`, a `ready` release whose deploy step waits to be
    /// claimed by a worker that can run it also says why.
    async fn of_run_after(
        &mut self,
        release: &Release,
        run: Option<&PipelineRecord>,
        deploy_too: bool,
    ) -> Result<Option<String>, ApiError> {
        let Some(run) = run else { return Ok(None) };
        let only_deploy = match release.status {
            ReleaseStatus::Building => false,
            ReleaseStatus::Ready if deploy_too => true,
            _ => return Ok(None),
        };
        let counts = |kind: &str| !only_deploy || kind == enclii_domain::jobs::Deploy::KIND;
        if !claimable(run).any(counts) {
            return Ok(None);
        }
        let capacity = self.capacity().await?;
        Ok(waiting_among(run, capacity, counts).map(|w| w.to_string()))
    }

    /// Why `release` does not move (reading its run when it is `building`).
    pub async fn of(&mut self, release: &Release) -> Result<Option<String>, ApiError> {
        if release.status != ReleaseStatus::Building {
            return Ok(None);
        }
        let run = self.own_run(release).await?;
        self.of_run(release, run.as_ref()).await
    }

    /// Why `release` does not move, for an answer about this one release: a `ready` release's
    /// run is read too (its deploy step may be what waits — `enclii up` asks while it waits for
    /// the deployment), which lists do not pay for.
    async fn of_one(&mut self, release: &Release) -> Result<Option<String>, ApiError> {
        if !matches!(release.status, ReleaseStatus::Building | ReleaseStatus::Ready) {
            return Ok(None);
        }
        let run = self.own_run(release).await?;
        self.of_run_after(release, run.as_ref(), true).await
    }

    /// One release as the API shows it, with its waiting reason — of its build or of its deploy
    /// step (see [`Lookup::of_one`]).
    pub async fn view_one(&mut self, release: Release) -> views::Release {
        let waiting = self.of_one(&release).await;
        shown(release, waiting)
    }

    /// `release` as the API shows it, with its waiting reason (of its build).
    pub async fn view(&mut self, release: Release) -> views::Release {
        let waiting = self.of(&release).await;
        shown(release, waiting)
    }

    /// `releases` as the API shows them, each with its waiting reason.
    pub async fn views(&mut self, releases: Vec<Release>) -> Vec<views::Release> {
        let mut shown = Vec::with_capacity(releases.len());
        for release in releases {
            shown.push(self.view(release).await);
        }
        shown
    }

    async fn capacity(&mut self) -> Result<&Capacity, ApiError> {
        let capacity = match self.capacity.take() {
            Some(capacity) => capacity,
            None => {
                let (now, workers) = recent_workers(self.state).await?;
                Capacity::of_workers(&workers, now)
            }
        };
        Ok(self.capacity.insert(capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(kinds: &[&str], unavailable: &[(&str, &str)], last_seen: i64, stopped: bool) -> WorkerRecord {
        WorkerRecord {
            id: "w".into(),
            host: "h".into(),
            pid: 1,
            kinds: serde_json::to_string(kinds).unwrap(),
            concurrency: 1,
            unavailable: serde_json::to_string(&unavailable.iter().copied().collect::<BTreeMap<_, _>>()).unwrap(),
            started_at: 0,
            last_seen,
            stopped_at: stopped.then_some(last_seen),
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn a_kind_no_alive_worker_runs_says_why() {
        let docker = "no Docker engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST";
        let deployer = worker(&["ping", "deploy"], &[("build", docker)], NOW, false);
        let capacity = Capacity::of_workers(std::slice::from_ref(&deployer), NOW);
        let build = capacity.stall("build").map(|stall| Waiting {
            kind: "build".into(),
            stall,
        });
        assert_eq!(
            build.unwrap().to_string(),
            format!("waiting: no worker can run build ({docker})")
        );
        assert_eq!(capacity.stall("deploy"), None);
        assert_eq!(capacity.stall("sign"), Some(Stall::Unhandled));
        assert_eq!(
            Waiting {
                kind: "sign".into(),
                stall: Stall::Unhandled
            }
            .to_string(),
            "waiting: no worker can run sign (no worker handles sign)"
        );

        // A builder alive beside it runs builds; lost and stopped workers count for nothing.
        let builder = worker(&["clone", "build"], &[], NOW - 1_000, false);
        assert_eq!(Capacity::of_workers(&[deployer, builder], NOW).stall("build"), None);
        let lost = worker(&["clone", "build"], &[], NOW - 60_000, false);
        let stopped = worker(&["clone", "build"], &[], NOW, true);
        let gone = Capacity::of_workers(&[lost, stopped], NOW);
        assert_eq!(gone.stall("build"), Some(Stall::NoWorker));
        assert_eq!(
            Waiting {
                kind: "clone".into(),
                stall: Stall::NoWorker
            }
            .to_string(),
            "waiting: no worker can run clone (no worker is running; start `enclii server` with the worker role)"
        );
    }
}
