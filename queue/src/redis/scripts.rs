//! The Lua scripts (one `.lua` file each, beside this one) and their handles. Every script runs
//! after the shared prelude; `ARGV[1]` is always the key prefix.

use ::redis::Script;

/// Helpers shared by every script. `ARGV[1]` is always the key prefix.
const LUA_PRELUDE: &str = include_str!("prelude.lua");

/// ARGV: prefix, publish, then per job: kind, project, payload, priority, policy, run_at_ms
/// ('' = now), unique_key ('' = none).
/// Returns id, duplicate (0/1) pairs.
const LUA_ENQUEUE: &str = include_str!("enqueue.lua");

/// ARGV: prefix, project, name, has_supersede, supersede_key, has_unique, unique_key, then per
/// step (topological order): name, kind, payload, priority, policy, run_at_ms, unique_key,
/// needs JSON, dependents JSON, #needs.
const LUA_ENQUEUE_PIPELINE: &str = include_str!("enqueue_pipeline.lua");

/// ARGV: prefix, worker, lease_ms, limit, rotation, max_projects, kinds...
/// Returns one array per claimed job: id, kind, project, payload, attempt, claims (the lease
/// token), policy, created_at_ms, run_at_ms, pipeline, step.
const LUA_CLAIM: &str = include_str!("claim.lua");

/// ARGV: prefix, worker, lease_ms, then id, token pairs. Returns per lease: 0 lost, 1 held,
/// 2 held and cancel requested.
const LUA_HEARTBEAT: &str = include_str!("heartbeat.lua");

/// States: completed, scheduled (retry), dead, cancelled, available (released).
/// ARGV: prefix, expired_only, then per ack: id, token, and either `c` (completed, not known
/// to be a pipeline step) or `x`, state, run_at_ms, has_error, error, meta ('1': the effects
/// that follow were computed from the job's pipeline data), effects, has_alt, [alt effects].
/// Effects: wake, succeeded check, stop state, stop reason, #released, released step names...
/// The alt effects (sent for scheduled and available) are those of the job ending cancelled
/// instead, which it does when its cancellation was requested while it ran.
/// Returns the ids deferred because their pipeline data was not supplied.
const LUA_ACK: &str = include_str!("ack.lua");

/// ARGV: prefix, id. Returns {'missing'} | {'requested'} | {'finished', state} | {'cancelled'}.
const LUA_CANCEL: &str = include_str!("cancel.lua");

/// ARGV: prefix, id. Returns {'missing'} | {'superseded', pipeline} | {'state', state} | {'ok'}.
const LUA_RETRY: &str = include_str!("retry.lua");

/// ARGV: prefix, limit. Returns now_ms, then per expired running job: id, attempt, claims, policy,
/// pipeline, worker.
const LUA_RESCUE_SCAN: &str = include_str!("rescue_scan.lua");

/// Jobs outside pipelines that finished before the cutoff. Every entry read leaves `finished`
/// (deleted, stale, or a pipeline's step indexed there by an older version: steps go with their
/// run), so each call reads from the front of the index, in O(limit).
/// ARGV: prefix, before_ms, limit. Returns deleted, scanned.
const LUA_PRUNE_JOBS: &str = include_str!("prune_jobs.lua");

/// Runs that are over, with all their steps, once every step finished before the cutoff.
/// `pfinished` scores a run by when it last changed (its end, or a step ending after it). Every
/// run read leaves the range before the cutoff: deleted with its steps; moved to the time its
/// last step finished, when that is not before the cutoff; or dropped from the index while a step
/// still runs (that step's ack indexes the run again). So each call reads from the front, and
/// stops once it has read `budget` steps and runs (it reads at least one run whole, as
/// enqueue_pipeline, retry and cancel do).
/// ARGV: prefix, before_ms, budget. Returns deleted jobs, more (0/1).
const LUA_PRUNE_PIPELINES: &str = include_str!("prune_pipelines.lua");

/// ARGV: prefix, pipeline id. Returns nil, or {pipeline fields, {per step: id, step, kind, state,
/// attempt, needs, last_error}}.
const LUA_PIPELINE_READ: &str = include_str!("pipeline_read.lua");

/// ARGV: prefix. Returns now_ms, depth hash (flat), {kind, oldest available run_at_ms}...
const LUA_STATS: &str = include_str!("stats.lua");

/// ARGV: prefix, project, max_running ('' = none), jobs_per_minute ('' = none).
const LUA_SET_LIMITS: &str = include_str!("set_limits.lua");

/// ARGV: prefix, pipeline floor, job floor. Raises `pseq` and `seq` to at least the floors (never
/// lowers them). Returns the two sequences after.
const LUA_ENSURE_IDS: &str = include_str!("ensure_ids.lua");

pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) enqueue_pipeline: Script,
    pub(super) claim: Script,
    pub(super) heartbeat: Script,
    pub(super) ack: Script,
    pub(super) cancel: Script,
    pub(super) retry: Script,
    pub(super) rescue_scan: Script,
    pub(super) prune_jobs: Script,
    pub(super) prune_pipelines: Script,
    pub(super) pipeline_read: Script,
    pub(super) stats: Script,
    pub(super) set_limits: Script,
    pub(super) ensure_ids: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        // A blank first line and one between prelude and body: Redis reports line numbers in script
        // errors counting from there, and the scripts' SHA1s stay what they were when inline.
        let s = |body: &str| Script::new(&["\n", LUA_PRELUDE, "\n", body].concat());
        Self {
            enqueue: s(LUA_ENQUEUE),
            enqueue_pipeline: s(LUA_ENQUEUE_PIPELINE),
            claim: s(LUA_CLAIM),
            heartbeat: s(LUA_HEARTBEAT),
            ack: s(LUA_ACK),
            cancel: s(LUA_CANCEL),
            retry: s(LUA_RETRY),
            rescue_scan: s(LUA_RESCUE_SCAN),
            prune_jobs: s(LUA_PRUNE_JOBS),
            prune_pipelines: s(LUA_PRUNE_PIPELINES),
            pipeline_read: s(LUA_PIPELINE_READ),
            stats: s(LUA_STATS),
            set_limits: s(LUA_SET_LIMITS),
            ensure_ids: s(LUA_ENSURE_IDS),
        }
    }

    pub(super) fn all(&self) -> [&Script; 14] {
        [
            &self.enqueue,
            &self.enqueue_pipeline,
            &self.claim,
            &self.heartbeat,
            &self.ack,
            &self.cancel,
            &self.retry,
            &self.rescue_scan,
            &self.prune_jobs,
            &self.prune_pipelines,
            &self.pipeline_read,
            &self.stats,
            &self.set_limits,
            &self.ensure_ids,
        ]
    }
}
