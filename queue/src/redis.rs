//! Redis backend: every state change is one atomic Lua script, so caps, leases and pipeline
//! progression are exact across worker processes, and every script does O(batch) work.
//!
//! Data model (all keys under `{prefix}:`, default prefix `roundhouse`):
//! - `job:{id}` hash: kind, project, payload (JSON text), state, priority, policy
//!   (`priority:max_attempts:timeout_ms:backoff_base_ms:backoff_max_ms`, one field so that a claim
//!   reads few fields), attempt, claims (claims so far: the lease token; never decremented or
//!   reset, unlike attempt), run_at_ms, created_at_ms, attempted_at_ms, finished_at_ms,
//!   lease_expires_at_ms and worker (meaningful only while running), cancel_requested,
//!   unique_key, pipeline, step, needs / dependents (JSON arrays), deps_remaining, last_error.
//!   Ids come from `INCRBY seq`.
//! - `avail:{len(kind)}:{kind}:{project}` zset of available jobs, scored `priority * 2^36 + id`
//!   (lower priority first, then oldest); `projects:{kind}` set of projects with available jobs of
//!   that kind; `avail_at:{kind}` zset of available jobs by `run_at` (oldest-available stats).
//! - `scheduled` zset by run_at (delayed jobs and retries), promoted inside the claim script;
//!   `running` zset by lease expiry; `nrunning` hash project → running count; `finished` zset of
//!   finished jobs outside pipelines by finished_at (prune; a pipeline's steps are pruned with their
//!   run); `unique` hash unique key → job id; `kinds` set of kinds ever enqueued;
//!   `depth` hash `{state}:{len(kind)}:{kind}{project}` → count (stats in O(kinds × projects)).
//! - `pipeline:{id}` hash (project, name, state, supersede_key, unique_key, created_at_ms,
//!   finished_at_ms) and `pipeline:{id}:steps` hash step → job id; ids from `pseq`;
//!   `supersede:{key}` set of running pipelines with that key; `punique` hash unique key →
//!   pipeline id; `pfinished` zset of runs that are over, by when they last changed: their end, or
//!   a step ending after it (prune).
//! - `limits:{project}` hash: max_running, jobs_per_minute, tokens, refilled_at_ms.
//! - channel `wake`: one message per enqueue call (and when acks make work available).
//!
//! Acknowledgements: a job's pipeline, step and dependents never change, so they are read first
//! (only for acks of pipeline steps); [`Progress::of`] on the row each ack would leave decides its
//! pipeline effects, and one script per batch applies every ack that still holds its lease together
//! with those effects, atomically (a crash cannot separate a step's completion from its fan-in).
//!
//! Ordering within a priority assumes ids below 2^36 (the score must stay exact in a double).
//! Timestamps inside scripts come from the Redis server clock (`TIME`), so processes agree.
//! The key layout is built inside the scripts, so this backend targets a single Redis server
//! (or a primary with replicas), not Redis Cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Script, ScriptInvocation, Value};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::backend::{
    Backend, CancelOutcome, ClaimRequest, DepthRow, HeartbeatReply, JobFilter, MAX_PROJECTS_PER_CLAIM, ProjectLimits,
    QueueStats, RescueReport, Wakeup,
};
use crate::error::{QueueError, Result};
use crate::job::{
    Ack, ClaimedJob, Enqueued, JobId, JobPolicy, JobRecord, JobState, Lease, NewJob, Outcome, PipelineId,
};
use crate::pipeline::{NewPipeline, PipelineEnqueued, PipelineRecord, StepRecord};
use crate::progress::{AckedRow, Progress, expired_lease_ack};

const NAME: &str = "redis";
/// Key prefix used by [`RedisQueue::connect`].
pub const DEFAULT_PREFIX: &str = "roundhouse";
/// Jobs per enqueue script call.
const ENQUEUE_CHUNK: usize = 1_000;
/// Acks per acknowledge script call.
const ACK_CHUNK: usize = 1_000;
/// Expired leases handled per `rescue_expired` call (as in the PostgreSQL backend).
const RESCUE_BATCH: usize = 1_000;
/// Finished jobs (or pipelines and their steps) examined per prune script call.
const PRUNE_BATCH: usize = 1_000;
/// Ids [`Backend::list_jobs`] reads back from the newest, and how many per round trip.
const LIST_SCAN_WINDOW: i64 = 50_000;
const LIST_PAGE: i64 = 500;
/// Most jobs one claim may return.
const MAX_CLAIM: usize = 10_000;

/// Helpers shared by every script. `ARGV[1]` is always the key prefix.
const LUA_PRELUDE: &str = r#"
local P = ARGV[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local SHIFT = 68719476736
local DEPTH = P .. ':depth'
local TRACKED = {pending = true, scheduled = true, available = true, running = true, dead = true}
local TERMINAL = {completed = true, dead = true, cancelled = true}
local delta = {}

local function jkey(id) return P .. ':job:' .. id end
local function akey(kind, project) return P .. ':avail:' .. #kind .. ':' .. kind .. ':' .. project end

local function dchange(kind, project, state, n)
  if TRACKED[state] and kind and project then
    local f = state .. ':' .. #kind .. ':' .. kind .. project
    delta[f] = (delta[f] or 0) + n
  end
end

local function dflush()
  for f, n in pairs(delta) do
    if n ~= 0 then
      if redis.call('HINCRBY', DEPTH, f, n) <= 0 then redis.call('HDEL', DEPTH, f) end
    end
  end
  delta = {}
end

local function batch(cmd, key, items)
  local n = #items
  local i = 1
  while i <= n do
    local j = i + 999
    if j > n then j = n end
    redis.call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
end

local function push(b, key, a, c)
  local l = b[key]
  if not l then l = {}; b[key] = l end
  l[#l + 1] = a
  if c ~= nil then l[#l + 1] = c end
end

local function flush(b, cmd)
  for key, items in pairs(b) do batch(cmd, key, items) end
end

local function avail_add(id, kind, project, priority, run_at)
  redis.call('ZADD', akey(kind, project), (tonumber(priority) or 0) * SHIFT + tonumber(id), id)
  redis.call('ZADD', P .. ':avail_at:' .. kind, tonumber(run_at) or NOW, id)
  redis.call('SADD', P .. ':projects:' .. kind, project)
end

local function unindex(id, state, kind, project)
  if state == 'available' then
    if kind and project then
      local k = akey(kind, project)
      redis.call('ZREM', k, id)
      if redis.call('ZCARD', k) == 0 then redis.call('SREM', P .. ':projects:' .. kind, project) end
      redis.call('ZREM', P .. ':avail_at:' .. kind, id)
    end
  elseif state == 'scheduled' then
    redis.call('ZREM', P .. ':scheduled', id)
  elseif TERMINAL[state] then
    redis.call('ZREM', P .. ':finished', id)
  end
end

local function finish_pipeline(pid, state)
  local pk = P .. ':pipeline:' .. pid
  local f = redis.call('HMGET', pk, 'state', 'supersede_key')
  if f[1] ~= 'running' then return false end
  redis.call('HSET', pk, 'state', state, 'finished_at_ms', NOW)
  if f[2] then redis.call('SREM', P .. ':supersede:' .. f[2], pid) end
  redis.call('ZADD', P .. ':pfinished', NOW, pid)
  return true
end

-- A step of a run that is over ended: the run is due for pruning from now on.
local function step_ended(pid)
  local st = redis.call('HGET', P .. ':pipeline:' .. pid, 'state')
  if st and st ~= 'running' then redis.call('ZADD', P .. ':pfinished', NOW, pid) end
end

local function stop_jobs(pid, reason)
  local ids = redis.call('HVALS', P .. ':pipeline:' .. pid .. ':steps')
  for _, id in ipairs(ids) do
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'state', 'kind', 'project')
    local st = f[1]
    if st == 'pending' or st == 'scheduled' or st == 'available' then
      unindex(id, st, f[2], f[3])
      redis.call('HSET', k, 'state', 'cancelled', 'finished_at_ms', NOW, 'last_error', reason)
      dchange(f[2], f[3], st, -1)
    elseif st == 'running' then
      redis.call('HSET', k, 'cancel_requested', '1')
    end
  end
end

local function maybe_succeed(pid)
  local pk = P .. ':pipeline:' .. pid
  if redis.call('HGET', pk, 'state') ~= 'running' then return end
  local ids = redis.call('HVALS', pk .. ':steps')
  for _, id in ipairs(ids) do
    local st = redis.call('HGET', jkey(id), 'state')
    if st and st ~= 'completed' then return end
  end
  finish_pipeline(pid, 'succeeded')
end
"#;

/// ARGV: prefix, publish, then per job: kind, project, payload, priority, policy, run_at_ms
/// ('' = now), unique_key ('' = none).
/// Returns id, duplicate (0/1) pairs.
const LUA_ENQUEUE: &str = r#"
local N = 7
local count = math.floor((#ARGV - 2) / N)
local out = {}
if count == 0 then return out end
local first = redis.call('INCRBY', P .. ':seq', count) - count + 1
local zadd, sadd, seen, kinds = {}, {}, {}, {}
for j = 0, count - 1 do
  local b = 3 + j * N
  local kind, project, ukey = ARGV[b], ARGV[b + 1], ARGV[b + 6]
  local id = first + j
  local existing = false
  if ukey ~= '' then
    existing = redis.call('HGET', P .. ':unique', ukey)
    if not existing then redis.call('HSET', P .. ':unique', ukey, id) end
  end
  if existing then
    out[#out + 1] = tonumber(existing)
    out[#out + 1] = 1
  else
    local ra = NOW
    if ARGV[b + 5] ~= '' then ra = tonumber(ARGV[b + 5]) or NOW end
    local state = 'available'
    if ra > NOW then state = 'scheduled' end
    local h = {'kind', kind, 'project', project, 'payload', ARGV[b + 2], 'state', state,
      'priority', ARGV[b + 3], 'attempt', 0, 'claims', 0, 'policy', ARGV[b + 4], 'run_at_ms', ra,
      'created_at_ms', NOW}
    if ukey ~= '' then h[#h + 1] = 'unique_key'; h[#h + 1] = ukey end
    redis.call('HSET', jkey(id), unpack(h))
    if state == 'available' then
      push(zadd, akey(kind, project), (tonumber(ARGV[b + 3]) or 0) * SHIFT + id, id)
      push(zadd, P .. ':avail_at:' .. kind, ra, id)
      local sk = P .. ':projects:' .. kind
      seen[sk] = seen[sk] or {}
      if not seen[sk][project] then seen[sk][project] = true; push(sadd, sk, project) end
    else
      push(zadd, P .. ':scheduled', ra, id)
    end
    if not kinds[kind] then kinds[kind] = true; redis.call('SADD', P .. ':kinds', kind) end
    dchange(kind, project, state, 1)
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
flush(zadd, 'ZADD')
flush(sadd, 'SADD')
dflush()
if ARGV[2] == '1' then redis.call('PUBLISH', P .. ':wake', '') end
return out
"#;

/// ARGV: prefix, project, name, has_supersede, supersede_key, has_unique, unique_key, then per
/// step (topological order): name, kind, payload, priority, policy, run_at_ms, unique_key,
/// needs JSON, dependents JSON, #needs.
const LUA_ENQUEUE_PIPELINE: &str = r#"
local project, name = ARGV[2], ARGV[3]
local has_sup, sup = ARGV[4] == '1', ARGV[5]
local has_uniq, uniq = ARGV[6] == '1', ARGV[7]
local N = 10
if has_uniq then
  local existing = redis.call('HGET', P .. ':punique', uniq)
  if existing then return {'dup', tonumber(existing)} end
end
local seenk = {}
for b = 8, #ARGV, N do
  local ukey = ARGV[b + 6]
  if ukey ~= '' then
    if seenk[ukey] or redis.call('HEXISTS', P .. ':unique', ukey) == 1 then return {'conflict', ARGV[b]} end
    seenk[ukey] = true
  end
end
local out = {'ok', 0}
if has_sup then
  local sk = P .. ':supersede:' .. sup
  local olds = redis.call('SMEMBERS', sk)
  local superseded = {}
  for _, old in ipairs(olds) do
    if finish_pipeline(old, 'superseded') then superseded[#superseded + 1] = old end
  end
  for _, old in ipairs(superseded) do
    stop_jobs(old, 'superseded by a newer pipeline')
    out[#out + 1] = tonumber(old)
  end
  redis.call('DEL', sk)
end
local pid = redis.call('INCR', P .. ':pseq')
out[2] = pid
local pk = P .. ':pipeline:' .. pid
local ph = {'project', project, 'name', name, 'state', 'running', 'created_at_ms', NOW}
if has_sup then
  ph[#ph + 1] = 'supersede_key'; ph[#ph + 1] = sup
  redis.call('SADD', P .. ':supersede:' .. sup, pid)
end
if has_uniq then
  ph[#ph + 1] = 'unique_key'; ph[#ph + 1] = uniq
  redis.call('HSET', P .. ':punique', uniq, pid)
end
redis.call('HSET', pk, unpack(ph))
local nsteps = math.floor((#ARGV - 7) / N)
local first = redis.call('INCRBY', P .. ':seq', nsteps) - nsteps + 1
local steps = {}
local j = 0
for b = 8, #ARGV, N do
  local id = first + j
  j = j + 1
  local kind, ukey, nneeds = ARGV[b + 1], ARGV[b + 6], tonumber(ARGV[b + 9]) or 0
  local ra = NOW
  if ARGV[b + 5] ~= '' then ra = tonumber(ARGV[b + 5]) or NOW end
  local state = 'available'
  if nneeds > 0 then state = 'pending' elseif ra > NOW then state = 'scheduled' end
  local h = {'kind', kind, 'project', project, 'payload', ARGV[b + 2], 'state', state,
    'priority', ARGV[b + 3], 'attempt', 0, 'claims', 0, 'policy', ARGV[b + 4], 'run_at_ms', ra,
    'created_at_ms', NOW, 'pipeline', pid, 'step', ARGV[b], 'needs', ARGV[b + 7], 'dependents', ARGV[b + 8],
    'deps_remaining', nneeds}
  if ukey ~= '' then
    h[#h + 1] = 'unique_key'; h[#h + 1] = ukey
    redis.call('HSET', P .. ':unique', ukey, id)
  end
  redis.call('HSET', jkey(id), unpack(h))
  steps[#steps + 1] = ARGV[b]
  steps[#steps + 1] = id
  if state == 'available' then
    avail_add(id, kind, project, ARGV[b + 3], ra)
  elseif state == 'scheduled' then
    redis.call('ZADD', P .. ':scheduled', ra, id)
  end
  redis.call('SADD', P .. ':kinds', kind)
  dchange(kind, project, state, 1)
end
batch('HSET', pk .. ':steps', steps)
dflush()
redis.call('PUBLISH', P .. ':wake', '')
return out
"#;

/// ARGV: prefix, worker, lease_ms, limit, rotation, max_projects, kinds...
/// Returns one array per claimed job: id, kind, project, payload, attempt, claims (the lease
/// token), policy, created_at_ms, run_at_ms, pipeline, step.
const LUA_CLAIM: &str = r#"
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local rotation = tonumber(ARGV[5])
local max_projects = tonumber(ARGV[6])
local kinds = {}
for i = 7, #ARGV do kinds[#kinds + 1] = ARGV[i] end

-- Promote due scheduled jobs (bounded per call).
local due = redis.call('ZRANGEBYSCORE', P .. ':scheduled', '-inf', NOW, 'LIMIT', 0, 1000)
if #due > 0 then
  local zadd, sadd, seen = {}, {}, {}
  for _, id in ipairs(due) do
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'state', 'kind', 'project', 'priority', 'run_at_ms')
    if f[1] == 'scheduled' and f[2] and f[3] then
      redis.call('HSET', k, 'state', 'available')
      push(zadd, akey(f[2], f[3]), (tonumber(f[4]) or 0) * SHIFT + tonumber(id), id)
      push(zadd, P .. ':avail_at:' .. f[2], tonumber(f[5]) or NOW, id)
      local sk = P .. ':projects:' .. f[2]
      seen[sk] = seen[sk] or {}
      if not seen[sk][f[3]] then seen[sk][f[3]] = true; push(sadd, sk, f[3]) end
      dchange(f[2], f[3], 'scheduled', -1)
      dchange(f[2], f[3], 'available', 1)
    end
  end
  batch('ZREM', P .. ':scheduled', due)
  flush(zadd, 'ZADD')
  flush(sadd, 'SADD')
  dflush()
end

-- Room of a project under its limits (-1: unlimited), read once per claim.
local room_of, tokens_of, refilled_of = {}, {}, {}
local function room(p)
  if room_of[p] then return room_of[p] end
  local l = redis.call('HMGET', P .. ':limits:' .. p, 'max_running', 'jobs_per_minute', 'tokens', 'refilled_at_ms')
  local r = -1
  local maxr, jpm = tonumber(l[1]), tonumber(l[2])
  if maxr then
    local running = tonumber(redis.call('HGET', P .. ':nrunning', p)) or 0
    r = maxr - running
    if r < 0 then r = 0 end
  end
  if jpm then
    local at = tonumber(l[4]) or NOW
    local elapsed = NOW - at
    if elapsed < 0 then elapsed = 0 end
    local tokens = (tonumber(l[3]) or 0) + (elapsed / 1000) * jpm / 60
    if tokens > jpm then tokens = jpm end
    tokens_of[p] = tokens
    -- Never move the bucket's clock backwards (a refill stamped by a server whose clock ran ahead).
    refilled_of[p] = math.max(NOW, at)
    local t = math.floor(math.max(tokens, 0))
    if r < 0 or t < r then r = t end
  end
  room_of[p] = r
  return r
end

-- Candidate projects: at most max_projects with available work of the worker's kinds and room to
-- start some. Each kind gets a share ceil(max_projects / #kinds) of them, the rounding favouring
-- kinds from `rotation` on; a kind with fewer projects leaves its unused share to the others. A
-- kind's share is filled from a random sample of twice its size, keeping only projects with room,
-- so projects at their limits take no one's place; a shortfall passes to the next kind, then to
-- fresh samples of kinds not wholly sampled. Everything here is O(max_projects + #kinds^2).
local nk = #kinds
local order, card, alloc, whole = {}, {}, {}, {}
for x = 0, nk - 1 do
  local kind = kinds[((rotation + x) % nk) + 1]
  order[#order + 1] = kind
  card[kind] = redis.call('SCARD', P .. ':projects:' .. kind)
  alloc[kind] = 0
end
local left = max_projects
while left > 0 do
  local hungry = {}
  for _, kind in ipairs(order) do
    if alloc[kind] < card[kind] then hungry[#hungry + 1] = kind end
  end
  if #hungry == 0 then break end
  local share = math.ceil(left / #hungry)
  for _, kind in ipairs(hungry) do
    local g = math.min(share, card[kind] - alloc[kind], left)
    alloc[kind] = alloc[kind] + g
    left = left - g
  end
end
local seenp, open = {}, {}
-- Keeps up to `want` new projects with room from a sample of twice that; returns how many.
local function sample(kind, want)
  if want <= 0 or #open >= max_projects then return 0 end
  local members = redis.call('SRANDMEMBER', P .. ':projects:' .. kind, 2 * want)
  if #members >= card[kind] then whole[kind] = true end
  local kept = 0
  for _, p in ipairs(members) do
    if kept >= want or #open >= max_projects then break end
    if not seenp[p] then
      seenp[p] = true
      local r = room(p)
      if r ~= 0 then
        open[#open + 1] = {p, r}
        kept = kept + 1
      end
    end
  end
  return kept
end
local carry = 0
for _, kind in ipairs(order) do
  if card[kind] > 0 then
    local want = alloc[kind] + carry
    carry = want - sample(kind, want)
  end
end
if #open < max_projects then
  local rest = {}
  for _, kind in ipairs(order) do
    if card[kind] > 0 and not whole[kind] then rest[#rest + 1] = kind end
  end
  for x, kind in ipairs(rest) do
    sample(kind, math.ceil((max_projects - #open) / (#rest - x + 1)))
  end
end
if #open == 0 or limit == 0 then return {} end
table.sort(open, function(a, b) return a[1] < b[1] end)

-- Water-filling split of the claim, as backend::fair_quotas.
local start = rotation % #open
local n = #open
if n > limit then n = limit end
local cand, quotas = {}, {}
for j = 1, n do
  cand[j] = open[((j - 1 + start) % #open) + 1]
  quotas[j] = 0
end
local budget = limit
while true do
  local hungry = {}
  for j = 1, n do
    if cand[j][2] < 0 or quotas[j] < cand[j][2] then hungry[#hungry + 1] = j end
  end
  if #hungry == 0 or budget == 0 then break end
  local share = math.floor(budget / #hungry)
  if share < 1 then share = 1 end
  for _, j in ipairs(hungry) do
    if budget == 0 then break end
    local grant = share
    if cand[j][2] >= 0 and cand[j][2] - quotas[j] < grant then grant = cand[j][2] - quotas[j] end
    if budget < grant then grant = budget end
    quotas[j] = quotas[j] + grant
    budget = budget - grant
  end
end

-- Pop each project's quota in priority order across the worker's kinds.
local out, zrun, zrem_at, nrun, used = {}, {}, {}, {}, {}
local lease_at = NOW + lease_ms
for j = 1, n do
  local q = quotas[j]
  if q > 0 then
    local p = cand[j][1]
    local picked = {}
    if #kinds == 1 then
      local k = akey(kinds[1], p)
      local popped = redis.call('ZPOPMIN', k, q)
      for x = 1, #popped, 2 do picked[#picked + 1] = {popped[x], kinds[1]} end
      if #popped < 2 * q or redis.call('ZCARD', k) == 0 then redis.call('SREM', P .. ':projects:' .. kinds[1], p) end
    else
      local heads = {}
      for _, kind in ipairs(kinds) do
        local r = redis.call('ZRANGE', akey(kind, p), 0, q - 1, 'WITHSCORES')
        if #r == 0 then redis.call('SREM', P .. ':projects:' .. kind, p) end
        for x = 1, #r, 2 do heads[#heads + 1] = {tonumber(r[x + 1]), kind} end
      end
      table.sort(heads, function(a, b) return a[1] < b[1] end)
      local take = {}
      for x = 1, math.min(q, #heads) do take[heads[x][2]] = (take[heads[x][2]] or 0) + 1 end
      for _, kind in ipairs(kinds) do
        local c = take[kind]
        if c then
          local k = akey(kind, p)
          local popped = redis.call('ZPOPMIN', k, c)
          for x = 1, #popped, 2 do picked[#picked + 1] = {popped[x], kind} end
          if redis.call('ZCARD', k) == 0 then redis.call('SREM', P .. ':projects:' .. kind, p) end
        end
      end
    end
    for _, pk in ipairs(picked) do
      local id, kind = pk[1], pk[2]
      local k = jkey(id)
      local f = redis.call('HMGET', k, 'state', 'payload', 'attempt', 'policy', 'created_at_ms', 'run_at_ms',
        'pipeline', 'step', 'claims')
      push(zrem_at, P .. ':avail_at:' .. kind, id)
      if f[1] == 'available' then
        local attempt = (tonumber(f[3]) or 0) + 1
        local claims = (tonumber(f[9]) or 0) + 1
        redis.call('HSET', k, 'state', 'running', 'attempt', attempt, 'claims', claims, 'worker', worker,
          'attempted_at_ms', NOW, 'lease_expires_at_ms', lease_at)
        zrun[#zrun + 1] = lease_at
        zrun[#zrun + 1] = id
        nrun[p] = (nrun[p] or 0) + 1
        used[p] = (used[p] or 0) + 1
        dchange(kind, p, 'available', -1)
        dchange(kind, p, 'running', 1)
        out[#out + 1] = {tonumber(id), kind, p, f[2], attempt, claims, f[4], f[5], f[6], f[7], f[8]}
      end
    end
  end
end
batch('ZADD', P .. ':running', zrun)
flush(zrem_at, 'ZREM')
for p, c in pairs(nrun) do redis.call('HINCRBY', P .. ':nrunning', p, c) end
for p, tokens in pairs(tokens_of) do
  redis.call('HSET', P .. ':limits:' .. p, 'tokens', tokens - (used[p] or 0), 'refilled_at_ms', refilled_of[p])
end
dflush()
return out
"#;

/// ARGV: prefix, worker, lease_ms, then id, token pairs. Returns per lease: 0 lost, 1 held,
/// 2 held and cancel requested.
const LUA_HEARTBEAT: &str = r#"
local worker = ARGV[2]
local lease_at = NOW + tonumber(ARGV[3])
local out, z = {}, {}
for i = 4, #ARGV - 1, 2 do
  local id = ARGV[i]
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'state', 'claims', 'worker', 'cancel_requested')
  local r = 0
  if f[1] == 'running' and tonumber(f[2]) == tonumber(ARGV[i + 1]) and f[3] == worker then
    redis.call('HSET', k, 'lease_expires_at_ms', lease_at)
    z[#z + 1] = lease_at
    z[#z + 1] = id
    r = 1
    if f[4] == '1' then r = 2 end
  end
  out[#out + 1] = r
end
batch('ZADD', P .. ':running', z)
return out
"#;

/// States: completed, scheduled (retry), dead, cancelled, available (released).
/// ARGV: prefix, expired_only, then per ack: id, token, and either `c` (completed, not known
/// to be a pipeline step) or `x`, state, run_at_ms, has_error, error, meta ('1': the effects
/// that follow were computed from the job's pipeline data), effects, has_alt, [alt effects].
/// Effects: wake, succeeded check, stop state, stop reason, #released, released step names...
/// The alt effects (sent for scheduled and available) are those of the job ending cancelled
/// instead, which it does when its cancellation was requested while it ran.
/// Returns the ids deferred because their pipeline data was not supplied.
const LUA_ACK: &str = r#"
local expired_only = ARGV[2] == '1'
local NOEFF = {w = '0', sflag = '0', sstate = '', sreason = '', nrel = 0, rel_start = 0}
local function effects(pos)
  local e = {w = ARGV[pos], sflag = ARGV[pos + 1], sstate = ARGV[pos + 2], sreason = ARGV[pos + 3],
    nrel = tonumber(ARGV[pos + 4]) or 0, rel_start = pos + 5}
  return e, e.rel_start + e.nrel
end
local i = 3
local zsched, zfin, zrun = {}, {}, {}
local nrun = {}
local released, stopped, succ, succ_seen, deferred, ended, ended_seen = {}, {}, {}, {}, {}, {}, {}
local wake = false
while i + 2 <= #ARGV do
  local id, token = ARGV[i], ARGV[i + 1]
  local state, run_at, has_err, err, meta = 'completed', '', '0', '', '0'
  local eff, alt = NOEFF, nil
  if ARGV[i + 2] == 'c' then
    i = i + 3
  else
    state, run_at, has_err, err, meta = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
    eff, i = effects(i + 8)
    if ARGV[i] == '1' then
      alt, i = effects(i + 1)
    else
      i = i + 1
    end
  end
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'state', 'claims', 'kind', 'project', 'pipeline', 'lease_expires_at_ms',
    'cancel_requested', 'attempt')
  if f[1] == 'running' and tonumber(f[2]) == tonumber(token)
     and ((not expired_only) or (tonumber(f[6]) or 0) < NOW) then
    local pid = f[5]
    if pid == '' then pid = false end
    if pid and meta ~= '1' then
      deferred[#deferred + 1] = tonumber(id)
    else
      local kind, project = f[3] or '', f[4] or ''
      -- A requested cancellation is never lost: not retried, not handed back.
      if f[7] == '1' and (state == 'scheduled' or state == 'available') then
        state, has_err, err = 'cancelled', '1', 'cancelled while running'
        eff = alt or NOEFF
      end
      -- worker and lease_expires_at_ms only mean something while running; they are left as is.
      local h = {'state', state}
      if f[7] == '1' then h[3] = 'cancel_requested'; h[4] = '0' end
      if has_err == '1' then h[#h + 1] = 'last_error'; h[#h + 1] = err end
      if run_at ~= '' then h[#h + 1] = 'run_at_ms'; h[#h + 1] = tonumber(run_at) or NOW end
      if state == 'scheduled' then
        zsched[#zsched + 1] = tonumber(run_at) or NOW
        zsched[#zsched + 1] = id
      elseif state == 'available' then
        -- Released unfinished: available again at once, and the attempt does not count.
        local r = redis.call('HMGET', k, 'priority', 'run_at_ms')
        h[#h + 1] = 'attempt'; h[#h + 1] = math.max((tonumber(f[8]) or 1) - 1, 0)
        avail_add(id, kind, project, r[1], r[2])
      else
        h[#h + 1] = 'finished_at_ms'; h[#h + 1] = NOW
        if pid then
          if not ended_seen[pid] then
            ended_seen[pid] = true
            ended[#ended + 1] = pid
          end
        else
          zfin[#zfin + 1] = NOW
          zfin[#zfin + 1] = id
        end
      end
      redis.call('HSET', k, unpack(h))
      zrun[#zrun + 1] = id
      nrun[project] = (nrun[project] or 0) - 1
      dchange(kind, project, 'running', -1)
      dchange(kind, project, state, 1)
      if eff.w == '1' then wake = true end
      if pid then
        for r = eff.rel_start, eff.rel_start + eff.nrel - 1 do released[#released + 1] = {pid, ARGV[r]} end
        if eff.sflag == '1' and not succ_seen[pid] then
          succ_seen[pid] = true
          succ[#succ + 1] = pid
        end
        if eff.sstate ~= '' then stopped[#stopped + 1] = {pid, eff.sstate, eff.sreason} end
      end
    end
  end
end
batch('ZREM', P .. ':running', zrun)
batch('ZADD', P .. ':scheduled', zsched)
batch('ZADD', P .. ':finished', zfin)
for p, c in pairs(nrun) do
  if redis.call('HINCRBY', P .. ':nrunning', p, c) <= 0 then redis.call('HDEL', P .. ':nrunning', p) end
end
-- Fan-in: each released (pipeline, step) loses one pending dependency.
for _, r in ipairs(released) do
  local sid = redis.call('HGET', P .. ':pipeline:' .. r[1] .. ':steps', r[2])
  if sid then
    local k = jkey(sid)
    local f = redis.call('HMGET', k, 'state', 'deps_remaining', 'kind', 'project', 'priority', 'run_at_ms')
    if f[1] == 'pending' then
      local d = (tonumber(f[2]) or 1) - 1
      wake = true
      if d <= 0 and f[3] and f[4] then
        redis.call('HSET', k, 'state', 'available', 'deps_remaining', 0)
        avail_add(sid, f[3], f[4], f[5], f[6])
        dchange(f[3], f[4], 'pending', -1)
        dchange(f[3], f[4], 'available', 1)
      else
        redis.call('HSET', k, 'deps_remaining', d)
      end
    end
  end
end
for _, s in ipairs(stopped) do
  if finish_pipeline(s[1], s[2]) then stop_jobs(s[1], s[3]) end
end
for _, pid in ipairs(succ) do maybe_succeed(pid) end
for _, pid in ipairs(ended) do step_ended(pid) end
dflush()
if wake then redis.call('PUBLISH', P .. ':wake', '') end
return deferred
"#;

/// ARGV: prefix, id. Returns {'missing'} | {'requested'} | {'finished', state} | {'cancelled'}.
const LUA_CANCEL: &str = r#"
local id = ARGV[2]
local k = jkey(id)
local f = redis.call('HMGET', k, 'state', 'kind', 'project', 'pipeline')
local st = f[1]
if not st then return {'missing'} end
if st == 'running' then
  redis.call('HSET', k, 'cancel_requested', '1')
  return {'requested'}
end
if TERMINAL[st] then return {'finished', st} end
if st ~= 'pending' and st ~= 'scheduled' and st ~= 'available' then return {'corrupt', st} end
unindex(id, st, f[2], f[3])
redis.call('HSET', k, 'state', 'cancelled', 'finished_at_ms', NOW, 'last_error', 'cancelled by request')
dchange(f[2], f[3], st, -1)
if f[4] and f[4] ~= '' then
  finish_pipeline(f[4], 'cancelled')
  stop_jobs(f[4], 'pipeline cancelled')
  step_ended(f[4])
else
  redis.call('ZADD', P .. ':finished', NOW, id)
end
dflush()
return {'cancelled'}
"#;

/// ARGV: prefix, id. Returns {'missing'} | {'superseded', pipeline} | {'state', state} | {'ok'}.
const LUA_RETRY: &str = r#"
local id = ARGV[2]
local k = jkey(id)
local f = redis.call('HMGET', k, 'state', 'kind', 'project', 'pipeline', 'priority')
local st = f[1]
if not st then return {'missing'} end
local pid = f[4]
if pid == '' then pid = false end
local pk = pid and (P .. ':pipeline:' .. pid)
if pid and redis.call('HGET', pk, 'state') == 'superseded' then return {'superseded', pid} end
if st ~= 'dead' and st ~= 'cancelled' then return {'state', st} end
if pid then
  -- Reopen the run: the retried step and the steps stopped with it wait again for what they
  -- need, and start when it has completed.
  local sup = redis.call('HGET', pk, 'supersede_key')
  redis.call('HSET', pk, 'state', 'running')
  redis.call('HDEL', pk, 'finished_at_ms')
  redis.call('ZREM', P .. ':pfinished', pid)
  if sup then redis.call('SADD', P .. ':supersede:' .. sup, pid) end
  local steps = redis.call('HGETALL', pk .. ':steps')
  local state_of, rows = {}, {}
  for x = 1, #steps, 2 do
    local sk = jkey(steps[x + 1])
    local r = redis.call('HMGET', sk, 'state', 'kind', 'project', 'needs', 'deps_remaining', 'priority', 'run_at_ms')
    if r[1] then
      state_of[steps[x]] = r[1]
      rows[#rows + 1] = {steps[x + 1], sk, r}
    end
  end
  for _, row in ipairs(rows) do
    local r = row[3]
    if r[1] == 'cancelled' or r[1] == 'dead' then
      local ok, needs = pcall(cjson.decode, r[4] or '[]')
      if not ok or type(needs) ~= 'table' then needs = {} end
      local remaining = 0
      for _, need in ipairs(needs) do
        local ns = state_of[need]
        if ns and ns ~= 'completed' then remaining = remaining + 1 end
      end
      unindex(row[1], r[1], r[2], r[3])
      redis.call('HSET', row[2], 'state', 'pending', 'attempt', 0, 'run_at_ms', NOW, 'cancel_requested', '0',
        'deps_remaining', remaining)
      redis.call('HDEL', row[2], 'finished_at_ms')
      dchange(r[2], r[3], r[1], -1)
      dchange(r[2], r[3], 'pending', 1)
      r[1] = 'pending'
      r[5] = remaining
      r[7] = NOW
    end
  end
  for _, row in ipairs(rows) do
    local r = row[3]
    if r[1] == 'pending' and (tonumber(r[5]) or 0) == 0 and r[2] and r[3] then
      redis.call('HSET', row[2], 'state', 'available')
      avail_add(row[1], r[2], r[3], r[6], r[7])
      dchange(r[2], r[3], 'pending', -1)
      dchange(r[2], r[3], 'available', 1)
    end
  end
else
  unindex(id, st, f[2], f[3])
  redis.call('HSET', k, 'state', 'available', 'attempt', 0, 'run_at_ms', NOW, 'cancel_requested', '0')
  redis.call('HDEL', k, 'finished_at_ms')
  if f[2] and f[3] then
    avail_add(id, f[2], f[3], f[5], NOW)
    dchange(f[2], f[3], st, -1)
    dchange(f[2], f[3], 'available', 1)
  end
end
dflush()
redis.call('PUBLISH', P .. ':wake', '')
return {'ok'}
"#;

/// ARGV: prefix, limit. Returns now_ms, then per expired running job: id, attempt, claims, policy,
/// pipeline, worker.
const LUA_RESCUE_SCAN: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', string.format('(%.0f', NOW), 'LIMIT', 0, tonumber(ARGV[2]))
local out = {NOW}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', jkey(id), 'state', 'attempt', 'claims', 'policy', 'pipeline', 'worker')
  if f[1] == 'running' then
    out[#out + 1] = {tonumber(id), f[2], f[3], f[4], f[5], f[6]}
  else
    redis.call('ZREM', P .. ':running', id)
  end
end
return out
"#;

/// Jobs outside pipelines that finished before the cutoff. Every entry read leaves `finished`
/// (deleted, stale, or a pipeline's step indexed there by an older version: steps go with their
/// run), so each call reads from the front of the index, in O(limit).
/// ARGV: prefix, before_ms, limit. Returns deleted, scanned.
const LUA_PRUNE_JOBS: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', P .. ':finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local deleted = 0
for _, id in ipairs(ids) do
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'state', 'pipeline', 'unique_key', 'kind', 'project')
  if TERMINAL[f[1]] and (not f[2] or f[2] == '') then
    dchange(f[4], f[5], f[1], -1)
    redis.call('DEL', k)
    if f[3] and redis.call('HGET', P .. ':unique', f[3]) == id then redis.call('HDEL', P .. ':unique', f[3]) end
    deleted = deleted + 1
  end
end
batch('ZREM', P .. ':finished', ids)
dflush()
return {deleted, #ids}
"#;

/// Runs that are over, with all their steps, once every step finished before the cutoff.
/// `pfinished` scores a run by when it last changed (its end, or a step ending after it). Every
/// run read leaves the range before the cutoff: deleted with its steps; moved to the time its
/// last step finished, when that is not before the cutoff; or dropped from the index while a step
/// still runs (that step's ack indexes the run again). So each call reads from the front, and
/// stops once it has read `budget` steps and runs (it reads at least one run whole, as
/// enqueue_pipeline, retry and cancel do).
/// ARGV: prefix, before_ms, budget. Returns deleted jobs, more (0/1).
const LUA_PRUNE_PIPELINES: &str = r#"
local before = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local PF = P .. ':pfinished'
local spent, deleted = 0, 0
while true do
  local pids = redis.call('ZRANGEBYSCORE', PF, '-inf', '(' .. ARGV[2], 'LIMIT', 0, math.max(budget - spent, 1))
  if #pids == 0 then break end
  for _, pid in ipairs(pids) do
    local pk = P .. ':pipeline:' .. pid
    local sk = pk .. ':steps'
    local n = redis.call('HLEN', sk)
    if spent > 0 and spent + 1 + n > budget then
      dflush()
      return {deleted, 1}
    end
    spent = spent + 1 + n
    local f = redis.call('HMGET', pk, 'state', 'unique_key', 'finished_at_ms')
    if not f[1] or f[1] == 'running' then
      -- Stale: a run that was reopened is indexed again when it is over.
      redis.call('ZREM', PF, pid)
    else
      local steps = redis.call('HVALS', sk)
      local rows = {}
      local unfinished = false
      local last = tonumber(f[3]) or 0
      for _, id in ipairs(steps) do
        local j = redis.call('HMGET', jkey(id), 'state', 'finished_at_ms', 'unique_key', 'kind', 'project')
        if j[1] then
          if not TERMINAL[j[1]] then
            unfinished = true
            break
          end
          last = math.max(last, tonumber(j[2]) or NOW)
          rows[#rows + 1] = {id, j}
        end
      end
      if unfinished then
        redis.call('ZREM', PF, pid)
      elseif last >= before then
        redis.call('ZADD', PF, last, pid)
      else
        for _, row in ipairs(rows) do
          local id, j = row[1], row[2]
          dchange(j[4], j[5], j[1], -1)
          redis.call('DEL', jkey(id))
          if j[3] and redis.call('HGET', P .. ':unique', j[3]) == id then redis.call('HDEL', P .. ':unique', j[3]) end
        end
        batch('ZREM', P .. ':finished', steps)
        redis.call('DEL', pk, sk)
        redis.call('ZREM', PF, pid)
        if f[2] and redis.call('HGET', P .. ':punique', f[2]) == pid then redis.call('HDEL', P .. ':punique', f[2]) end
        deleted = deleted + #rows
      end
    end
  end
  if spent >= budget then
    dflush()
    return {deleted, 1}
  end
end
dflush()
return {deleted, 0}
"#;

/// ARGV: prefix, pipeline id. Returns nil, or {pipeline fields, {per step: id, step, kind, state,
/// attempt, needs, last_error}}.
const LUA_PIPELINE_READ: &str = r#"
local pk = P .. ':pipeline:' .. ARGV[2]
local f = redis.call('HMGET', pk, 'project', 'name', 'state', 'supersede_key', 'created_at_ms', 'finished_at_ms')
if not f[3] then return false end
local steps = redis.call('HGETALL', pk .. ':steps')
local rows = {}
for x = 1, #steps, 2 do
  local id = steps[x + 1]
  local j = redis.call('HMGET', jkey(id), 'step', 'kind', 'state', 'attempt', 'needs', 'last_error')
  if j[3] then rows[#rows + 1] = {tonumber(id), j[1], j[2], j[3], j[4], j[5], j[6]} end
end
return {f, rows}
"#;

/// ARGV: prefix. Returns now_ms, depth hash (flat), {kind, oldest available run_at_ms}...
const LUA_STATS: &str = r#"
local depth = redis.call('HGETALL', DEPTH)
local oldest = {}
for _, kind in ipairs(redis.call('SMEMBERS', P .. ':kinds')) do
  local r = redis.call('ZRANGE', P .. ':avail_at:' .. kind, 0, 0, 'WITHSCORES')
  if #r > 0 then
    oldest[#oldest + 1] = kind
    oldest[#oldest + 1] = r[2]
  end
end
return {NOW, depth, oldest}
"#;

/// ARGV: prefix, project, max_running ('' = none), jobs_per_minute ('' = none).
const LUA_SET_LIMITS: &str = r#"
local k = P .. ':limits:' .. ARGV[2]
local jpm = tonumber(ARGV[4]) or 0
if redis.call('EXISTS', k) == 1 then
  local tokens = tonumber(redis.call('HGET', k, 'tokens')) or 0
  if jpm < tokens then tokens = jpm end
  redis.call('HSET', k, 'tokens', tokens)
else
  redis.call('HSET', k, 'tokens', jpm, 'refilled_at_ms', NOW)
end
if ARGV[3] == '' then redis.call('HDEL', k, 'max_running') else redis.call('HSET', k, 'max_running', ARGV[3]) end
if ARGV[4] == '' then redis.call('HDEL', k, 'jobs_per_minute') else redis.call('HSET', k, 'jobs_per_minute', ARGV[4]) end
return 1
"#;

struct Scripts {
    enqueue: Script,
    enqueue_pipeline: Script,
    claim: Script,
    heartbeat: Script,
    ack: Script,
    cancel: Script,
    retry: Script,
    rescue_scan: Script,
    prune_jobs: Script,
    prune_pipelines: Script,
    pipeline_read: Script,
    stats: Script,
    set_limits: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&[LUA_PRELUDE, body].concat());
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
        }
    }

    fn all(&self) -> [&Script; 13] {
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
        ]
    }
}

/// The Redis queue backend. Cheap to share; all methods take `&self`.
pub struct RedisQueue {
    con: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    notify: Arc<Wakeup>,
    rotation: AtomicUsize,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The pipeline data of an acknowledged job, fetched before its ack is applied.
struct AckMeta {
    pipeline: Option<PipelineId>,
    step: Option<String>,
    dependents: Vec<String>,
}

impl RedisQueue {
    /// Connects with the default key prefix (`roundhouse`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects with all keys under `{prefix}:` (tests use one prefix each).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self> {
        let client = ::redis::Client::open(url).map_err(|e| unavailable(url, &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2);
        let mut con = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| unavailable(url, &e))?;
        warn_if_evicting(maxmemory_policy(&mut con).await.as_deref());
        let scripts = Scripts::new();
        for script in scripts.all() {
            script.load_async(&mut con).await.map_err(|e| unavailable(url, &e))?;
        }
        let notify = Arc::new(Wakeup::default());
        let channel = format!("{prefix}:wake");
        let listener = tokio::spawn(listen(client, channel, notify.clone()));
        Ok(Self {
            con,
            prefix: prefix.to_string(),
            scripts,
            notify,
            rotation: AtomicUsize::new(0),
            listener,
        })
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    async fn fetch_meta(&self, ids: &[JobId]) -> Result<HashMap<JobId, AckMeta>> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.job_key(*id))
                .arg("pipeline")
                .arg("step")
                .arg("dependents");
        }
        let rows: Vec<Value> = pipe.query_async(&mut self.con()).await?;
        for (id, row) in ids.iter().zip(rows) {
            let mut f = strings(row, "job pipeline data")?.into_iter();
            let pipeline = opt_int(&f.next().flatten(), "pipeline")?;
            let step = f.next().flatten();
            let dependents = match f.next().flatten() {
                Some(json) if pipeline.is_some() => serde_json::from_str(&json)
                    .map_err(|_| QueueError::Corrupt(format!("job {id} has unreadable dependents")))?,
                _ => Vec::new(),
            };
            out.insert(
                *id,
                AckMeta {
                    pipeline,
                    step,
                    dependents,
                },
            );
        }
        Ok(out)
    }

    /// Applies finished attempts and moves their pipelines on, in one script per chunk. With
    /// `expired_only`, only jobs whose lease has run out are touched (the reaper's path).
    async fn apply_acks(&self, acks: &[Ack], expired_only: bool) -> Result<()> {
        for chunk in acks.chunks(ACK_CHUNK) {
            let hinted: Vec<JobId> = chunk
                .iter()
                .filter(|a| a.pipeline.is_some())
                .map(|a| a.lease.job)
                .collect();
            let mut meta = self.fetch_meta(&hinted).await?;
            let deferred = self.run_ack_script(chunk, &meta, expired_only).await?;
            if deferred.is_empty() {
                continue;
            }
            // Acks that did not say their job belongs to a pipeline, but it does.
            meta.extend(self.fetch_meta(&deferred).await?);
            let again: Vec<Ack> = chunk
                .iter()
                .filter(|a| deferred.contains(&a.lease.job))
                .cloned()
                .collect();
            let left = self.run_ack_script(&again, &meta, expired_only).await?;
            if !left.is_empty() {
                return Err(QueueError::Corrupt(format!(
                    "jobs {left:?} changed pipeline while being acknowledged"
                )));
            }
        }
        Ok(())
    }

    /// One prune script call; returns its two counts.
    async fn prune_call(&self, script: &Script, before_ms: i64) -> Result<(u64, u64)> {
        let v: Value = script
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(before_ms)
            .arg(PRUNE_BATCH)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "prune reply")?;
        if f.len() != 2 {
            return Err(corrupt("prune reply has the wrong shape"));
        }
        Ok((
            int(&f[0], "deleted")?.max(0) as u64,
            int(&f[1], "prune count")?.max(0) as u64,
        ))
    }

    async fn run_ack_script(
        &self,
        acks: &[Ack],
        meta: &HashMap<JobId, AckMeta>,
        expired_only: bool,
    ) -> Result<Vec<JobId>> {
        if acks.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.ack.prepare_invoke();
        inv.arg(&self.prefix).arg(if expired_only { "1" } else { "0" });
        for ack in acks {
            push_ack(&mut inv, ack, meta.get(&ack.lease.job));
        }
        let deferred: Value = inv.invoke_async(&mut self.con()).await?;
        array(deferred, "ack reply")?
            .into_iter()
            .map(|v| int(&opt_string(v)?, "deferred id"))
            .collect()
    }
}

/// Adds one ack's arguments; its pipeline effects come from [`Progress::of`] on the row the ack
/// will leave, and the script applies them only if the ack applies. A retry or a hand-back also
/// carries the effects of the job ending cancelled, which the script applies instead when the
/// job's cancellation was requested while it ran.
fn push_ack(inv: &mut ScriptInvocation<'_>, ack: &Ack, meta: Option<&AckMeta>) {
    inv.arg(ack.lease.job).arg(ack.lease.token);
    if meta.is_none() && ack.outcome == Outcome::Completed {
        inv.arg("c");
        return;
    }
    let state = ack.outcome.state();
    let row = |state: JobState| AckedRow {
        pipeline: meta.and_then(|m| m.pipeline),
        state,
        step: meta.and_then(|m| m.step.clone()),
        dependents: meta.map(|m| m.dependents.clone()).unwrap_or_default(),
    };
    inv.arg("x")
        .arg(state.as_str())
        .arg(
            ack.outcome
                .run_at()
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default(),
        )
        .arg(if ack.outcome.error().is_some() { "1" } else { "0" })
        .arg(ack.outcome.error().unwrap_or_default())
        .arg(if meta.is_some() { "1" } else { "0" });
    push_effects(inv, &Progress::of(&[row(state)]));
    if matches!(state, JobState::Scheduled | JobState::Available) {
        inv.arg("1");
        push_effects(inv, &Progress::of(&[row(JobState::Cancelled)]));
    } else {
        inv.arg("0");
    }
}

/// Adds the effects of one acked row: wake, succeeded check, stop state and reason, released steps.
fn push_effects(inv: &mut ScriptInvocation<'_>, progress: &Progress) {
    let stop = progress.stopped.first();
    inv.arg(if progress.wake { "1" } else { "0" })
        .arg(if progress.maybe_succeeded.is_empty() { "0" } else { "1" })
        .arg(stop.map(|s| s.state.as_str()).unwrap_or_default())
        .arg(stop.map(|s| s.reason.as_str()).unwrap_or_default())
        .arg(progress.released.len());
    for (_, step) in &progress.released {
        inv.arg(step);
    }
}

/// The server's `maxmemory-policy`; `None` when it cannot be read (managed Redis services often
/// disable CONFIG).
async fn maxmemory_policy(con: &mut ConnectionManager) -> Option<String> {
    let reply: Value = match ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(con)
        .await
    {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the Redis maxmemory-policy");
            return None;
        }
    };
    let value = match reply {
        // RESP2: [name, value]; RESP3: {name: value}.
        Value::Array(items) => items.into_iter().nth(1)?,
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        _ => return None,
    };
    opt_string(value).ok().flatten()
}

/// The queue lives only in Redis: a key evicted under memory pressure loses jobs (or a pipeline,
/// a lease, a count), and an evicted id sequence makes ids be handed out again. Not refused, as
/// the server may never reach its memory limit, but said loudly.
fn warn_if_evicting(policy: Option<&str>) {
    if let Some(policy) = policy.filter(|p| !p.eq_ignore_ascii_case("noeviction")) {
        tracing::warn!(
            maxmemory_policy = policy,
            "Redis may evict keys (maxmemory-policy is `{policy}`): evicted keys lose jobs and can make \
             job ids be reused; the Redis used for the queue must run with `maxmemory-policy noeviction`"
        );
    }
}

async fn listen(client: ::redis::Client, channel: String, notify: Arc<Wakeup>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    // Wake pollers after a (re)connect: messages may have been missed.
                    notify.wake();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        notify.wake();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SUBSCRIBE failed; workers fall back to polling"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot open the Redis pub/sub connection; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A connection failure, with the URL and any credentials it carries removed from the message.
fn unavailable(url: &str, e: &::redis::RedisError) -> QueueError {
    let mut message = e.to_string();
    if !url.is_empty() {
        message = message.replace(url, "<redis url>");
    }
    if let Some((_, rest)) = url.split_once("://")
        && let Some((userinfo, _)) = rest.rsplit_once('@')
    {
        let mut secrets: Vec<&str> = vec![userinfo];
        secrets.extend(userinfo.split(':'));
        for secret in secrets.into_iter().filter(|s| s.len() >= 3) {
            message = message.replace(secret, "***");
        }
    }
    QueueError::Unavailable { backend: NAME, message }
}

fn corrupt(message: impl Into<String>) -> QueueError {
    QueueError::Corrupt(message.into())
}

fn array(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt(format!("{what}: expected an array from Redis"))),
    }
}

fn opt_string(v: Value) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| corrupt("a stored string is not UTF-8")),
        Value::SimpleString(s) => Ok(Some(s)),
        Value::Int(i) => Ok(Some(i.to_string())),
        Value::Double(d) => Ok(Some(d.to_string())),
        Value::Okay => Ok(Some("OK".into())),
        // Scripts return Lua `false` for absent fields: RESP2 nil, RESP3 boolean false.
        Value::Boolean(false) => Ok(None),
        Value::Boolean(true) => Ok(Some("1".into())),
        _ => Err(corrupt("unexpected nested value from Redis")),
    }
}

fn strings(v: Value, what: &str) -> Result<Vec<Option<String>>> {
    array(v, what)?.into_iter().map(opt_string).collect()
}

/// A stored integer; empty means absent.
fn opt_int(v: &Option<String>, what: &str) -> Result<Option<i64>> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| Some(f as i64))
                .ok_or_else(|| corrupt(format!("{what} is not a number"))),
        },
    }
}

fn int(v: &Option<String>, what: &str) -> Result<i64> {
    opt_int(v, what)?.ok_or_else(|| corrupt(format!("{what} is missing")))
}

fn req(v: Option<String>, what: &str) -> Result<String> {
    v.ok_or_else(|| corrupt(format!("{what} is missing")))
}

fn ms_time(ms: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("{what} is out of range")))
}

fn opt_time(v: &Option<String>, what: &str) -> Result<Option<DateTime<Utc>>> {
    opt_int(v, what)?.map(|ms| ms_time(ms, what)).transpose()
}

fn payload(v: Option<String>, id: JobId) -> Result<serde_json::Value> {
    let text = req(v, "payload")?;
    serde_json::from_str(&text).map_err(|_| corrupt(format!("job {id} has an unreadable payload")))
}

/// A job's policy as stored: `priority:max_attempts:timeout_ms:backoff_base_ms:backoff_max_ms`.
fn policy_text(policy: &JobPolicy) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        policy.priority,
        policy.max_attempts,
        policy.timeout_ms(),
        policy.backoff.base.as_millis(),
        policy.backoff.max.as_millis()
    )
}

fn policy_of(v: &Option<String>) -> Result<JobPolicy> {
    let text = v.as_deref().ok_or_else(|| corrupt("policy is missing"))?;
    let mut parts = text.split(':').map(|p| p.parse::<i64>());
    let mut next = || match parts.next() {
        Some(Ok(n)) => Ok(n),
        _ => Err(corrupt("policy is unreadable")),
    };
    Ok(JobPolicy::from_stored(next()?, next()?, next()?, next()?, next()?))
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// A claimed job that cannot be read, with its lease when even that much could be read.
struct Unreadable {
    lease: Option<Lease>,
    problem: QueueError,
}

fn claimed(v: Value) -> std::result::Result<ClaimedJob, Unreadable> {
    let unreadable = |problem| Unreadable { lease: None, problem };
    let mut f = strings(v, "claimed job").map_err(unreadable)?;
    if f.len() != 11 {
        return Err(unreadable(corrupt("claim reply has the wrong shape")));
    }
    let id = int(&f[0], "job id").map_err(unreadable)?;
    let lease_token = int(&f[5], "claims").map_err(unreadable)?.max(0) as u32;
    let lease = Lease {
        job: id,
        token: lease_token,
    };
    let mut read = || -> Result<ClaimedJob> {
        Ok(ClaimedJob {
            id,
            kind: req(f[1].take(), "kind")?,
            project: req(f[2].take(), "project")?,
            payload: payload(f[3].take(), id)?,
            attempt: int(&f[4], "attempt")?.max(0) as u32,
            lease_token,
            policy: policy_of(&f[6])?,
            created_at: ms_time(int(&f[7], "created_at")?, "created_at")?,
            run_at: ms_time(int(&f[8], "run_at")?, "run_at")?,
            pipeline: opt_int(&f[9], "pipeline")?,
            step: non_empty(f[10].take()),
        })
    };
    read().map_err(|problem| Unreadable {
        lease: Some(lease),
        problem,
    })
}

const JOB_FIELDS: [&str; 17] = [
    "kind",
    "project",
    "payload",
    "state",
    "policy",
    "attempt",
    "run_at_ms",
    "created_at_ms",
    "attempted_at_ms",
    "finished_at_ms",
    "lease_expires_at_ms",
    "worker",
    "cancel_requested",
    "unique_key",
    "pipeline",
    "step",
    "last_error",
];

fn record(id: JobId, mut f: Vec<Option<String>>) -> Result<JobRecord> {
    if f.len() != JOB_FIELDS.len() {
        return Err(corrupt("job reply has the wrong shape"));
    }
    let state: JobState = req(f[3].take(), "state")?.parse()?;
    // The worker and lease of a job are kept after it stops running; they only count while it runs.
    let running = state == JobState::Running;
    Ok(JobRecord {
        id,
        kind: req(f[0].take(), "kind")?,
        project: req(f[1].take(), "project")?,
        // Operators must be able to inspect a dead-lettered job whose payload is not JSON.
        payload: {
            let raw = f[2].take();
            payload(raw.clone(), id).unwrap_or_else(|_| serde_json::json!({ "corrupt_payload": raw }))
        },
        state,
        attempt: int(&f[5], "attempt")?.max(0) as u32,
        policy: policy_of(&f[4])?,
        run_at: ms_time(int(&f[6], "run_at")?, "run_at")?,
        created_at: ms_time(int(&f[7], "created_at")?, "created_at")?,
        attempted_at: opt_time(&f[8], "attempted_at")?,
        finished_at: opt_time(&f[9], "finished_at")?,
        lease_expires_at: if running {
            opt_time(&f[10], "lease_expires_at")?
        } else {
            None
        },
        worker: if running { non_empty(f[11].take()) } else { None },
        cancel_requested: f[12].as_deref() == Some("1"),
        unique_key: f[13].take(),
        pipeline: opt_int(&f[14], "pipeline")?,
        step: non_empty(f[15].take()),
        last_error: f[16].take(),
    })
}

/// Parses a depth field: `{state}:{len(kind)}:{kind}{project}`.
fn depth_field(field: &str) -> Result<(JobState, String, String)> {
    let bad = || corrupt("unreadable depth counter");
    let (state, rest) = field.split_once(':').ok_or_else(bad)?;
    let (len, rest) = rest.split_once(':').ok_or_else(bad)?;
    let len: usize = len.parse().map_err(|_| bad())?;
    if !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
        return Err(bad());
    }
    let (kind, project) = rest.split_at(len);
    Ok((state.parse()?, kind.to_string(), project.to_string()))
}

fn tag(v: &[Option<String>]) -> &str {
    v.first().and_then(|s| s.as_deref()).unwrap_or_default()
}

#[async_trait]
impl Backend for RedisQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING").query_async(&mut self.con()).await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut payloads = Vec::with_capacity(jobs.len());
        for job in &jobs {
            payloads.push(
                serde_json::to_string(&job.payload).map_err(|source| QueueError::Payload {
                    kind: job.kind.clone(),
                    source,
                })?,
            );
        }
        let chunks = jobs.len().div_ceil(ENQUEUE_CHUNK);
        // One script call per chunk, all sent at once on the multiplexed connection (pipelined);
        // the last one publishes the wake-up.
        let calls = jobs
            .chunks(ENQUEUE_CHUNK)
            .zip(payloads.chunks(ENQUEUE_CHUNK))
            .enumerate()
            .map(|(n, (chunk, payloads))| {
                let mut inv = self.scripts.enqueue.prepare_invoke();
                inv.arg(&self.prefix).arg(if n + 1 == chunks { "1" } else { "0" });
                for (job, payload) in chunk.iter().zip(payloads) {
                    inv.arg(&job.kind)
                        .arg(&job.project)
                        .arg(payload)
                        .arg(job.policy.priority)
                        .arg(policy_text(&job.policy))
                        .arg(job.run_at.map(|t| t.timestamp_millis().to_string()).unwrap_or_default())
                        .arg(job.unique_key.as_deref().unwrap_or_default());
                }
                let mut con = self.con();
                async move { inv.invoke_async::<Value>(&mut con).await }
            });
        let replies = futures::future::try_join_all(calls).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for reply in replies {
            let f = strings(reply, "enqueue reply")?;
            for pair in f.chunks(2) {
                out.push(Enqueued {
                    id: int(&pair[0], "job id")?,
                    duplicate: pair.get(1).is_some_and(|d| d.as_deref() == Some("1")),
                });
            }
        }
        if out.len() != jobs.len() {
            return Err(corrupt("enqueue returned the wrong number of jobs"));
        }
        Ok(out)
    }

    async fn enqueue_pipeline(&self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let plan = pipeline.plan()?;
        let mut inv = self.scripts.enqueue_pipeline.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&pipeline.project)
            .arg(&pipeline.name)
            .arg(if pipeline.supersede_key.is_some() { "1" } else { "0" })
            .arg(pipeline.supersede_key.as_deref().unwrap_or_default())
            .arg(if pipeline.unique_key.is_some() { "1" } else { "0" })
            .arg(pipeline.unique_key.as_deref().unwrap_or_default());
        for planned in &plan {
            let step = planned.step;
            let job = &step.job;
            let payload = serde_json::to_string(&job.payload).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            let needs = serde_json::to_string(&step.needs).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            let dependents = serde_json::to_string(&planned.dependents).map_err(|source| QueueError::Payload {
                kind: job.kind.clone(),
                source,
            })?;
            inv.arg(&step.name)
                .arg(&job.kind)
                .arg(payload)
                .arg(job.policy.priority)
                .arg(policy_text(&job.policy))
                .arg(job.run_at.map(|t| t.timestamp_millis().to_string()).unwrap_or_default())
                .arg(job.unique_key.as_deref().unwrap_or_default())
                .arg(needs)
                .arg(dependents)
                .arg(step.needs.len());
        }
        let reply: Value = inv.invoke_async(&mut self.con()).await?;
        let f = strings(reply, "enqueue_pipeline reply")?;
        match tag(&f) {
            "dup" => Ok(PipelineEnqueued {
                id: int(f.get(1).unwrap_or(&None), "pipeline id")?,
                duplicate: true,
                superseded: vec![],
            }),
            "conflict" => Err(QueueError::InvalidPipeline(format!(
                "step `{}` has a unique key that another job already holds",
                f.get(1).cloned().flatten().unwrap_or_default()
            ))),
            "ok" => {
                let id = int(f.get(1).unwrap_or(&None), "pipeline id")?;
                let mut superseded = f[2..]
                    .iter()
                    .map(|v| int(v, "pipeline id"))
                    .collect::<Result<Vec<_>>>()?;
                superseded.sort_unstable();
                Ok(PipelineEnqueued {
                    id,
                    duplicate: false,
                    superseded,
                })
            }
            _ => Err(corrupt("enqueue_pipeline reply has the wrong shape")),
        }
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut kinds: Vec<&str> = request.kinds.iter().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed) % (1 << 30);
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&request.worker)
            .arg(request.lease.as_millis() as u64)
            .arg(request.limit.min(MAX_CLAIM))
            .arg(rotation)
            .arg(MAX_PROJECTS_PER_CLAIM);
        for kind in kinds {
            inv.arg(kind);
        }
        let reply: Value = inv.invoke_async(&mut self.con()).await?;
        let mut jobs = Vec::new();
        let mut corrupt = Vec::new();
        for entry in array(reply, "claim reply")? {
            match claimed(entry) {
                Ok(job) => jobs.push(job),
                Err(Unreadable {
                    lease: Some(lease),
                    problem,
                }) => {
                    tracing::error!(job = lease.job, error = %problem, "dead-lettering a job whose stored data cannot be read");
                    corrupt.push(Ack {
                        lease,
                        pipeline: None,
                        outcome: Outcome::Dead {
                            error: format!("{problem}; fix or re-enqueue the job"),
                        },
                    });
                }
                Err(Unreadable { lease: None, problem }) => return Err(problem),
            }
        }
        // One unreadable job must not fail the claim of the others.
        if !corrupt.is_empty() {
            self.acknowledge(corrupt).await?;
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<HeartbeatReply> {
        if leases.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        let mut reply = HeartbeatReply::default();
        for chunk in leases.chunks(ACK_CHUNK) {
            let mut inv = self.scripts.heartbeat.prepare_invoke();
            inv.arg(&self.prefix).arg(worker).arg(lease.as_millis() as u64);
            for l in chunk {
                inv.arg(l.job).arg(l.token);
            }
            let v: Value = inv.invoke_async(&mut self.con()).await?;
            let held = strings(v, "heartbeat reply")?;
            if held.len() != chunk.len() {
                return Err(corrupt("heartbeat reply has the wrong shape"));
            }
            for (l, h) in chunk.iter().zip(held) {
                match h.as_deref() {
                    Some("1") => {}
                    Some("2") => reply.cancel.push(l.job),
                    _ => reply.lost.push(l.job),
                }
            }
        }
        Ok(reply)
    }

    async fn acknowledge(&self, acks: Vec<Ack>) -> Result<()> {
        self.apply_acks(&acks, false).await
    }

    async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        let v: Value = self
            .scripts
            .cancel
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "cancel reply")?;
        match tag(&f) {
            "missing" => Err(QueueError::JobNotFound(id)),
            "requested" => Ok(CancelOutcome::Requested),
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "finished" => Ok(CancelOutcome::AlreadyFinished(
                req(f.get(1).cloned().flatten(), "state")?.parse()?,
            )),
            _ => Err(corrupt(format!("job {id} is in an unknown state"))),
        }
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let v: Value = self
            .scripts
            .retry
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        let f = strings(v, "retry reply")?;
        match tag(&f) {
            "ok" => Ok(()),
            "missing" => Err(QueueError::JobNotFound(id)),
            "superseded" => Err(QueueError::SupersededPipeline {
                id,
                pipeline: int(f.get(1).unwrap_or(&None), "pipeline id")?,
            }),
            "state" => Err(QueueError::NotRetryable {
                id,
                state: req(f.get(1).cloned().flatten(), "state")?.parse()?,
            }),
            _ => Err(corrupt("retry reply has the wrong shape")),
        }
    }

    async fn rescue_expired(&self) -> Result<RescueReport> {
        let v: Value = self
            .scripts
            .rescue_scan
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(RESCUE_BATCH)
            .invoke_async(&mut self.con())
            .await?;
        let mut rows = array(v, "rescue reply")?.into_iter();
        let now_ms = int(&opt_string(rows.next().unwrap_or(Value::Nil))?, "server time")?;
        let now = ms_time(now_ms, "server time")?;
        let mut report = RescueReport::default();
        let mut acks = Vec::new();
        for row in rows {
            let f = strings(row, "expired job")?;
            if f.len() != 6 {
                return Err(corrupt("rescue reply has the wrong shape"));
            }
            let lease = Lease {
                job: int(&f[0], "job id")?,
                token: int(&f[2], "claims")?.max(0) as u32,
            };
            let attempt = int(&f[1], "attempt")?.max(0) as u32;
            let policy = policy_of(&f[3])?;
            let pipeline = opt_int(&f[4], "pipeline")?;
            let worker = f[5].as_deref().filter(|w| !w.is_empty());
            acks.push(expired_lease_ack(
                lease,
                attempt,
                pipeline,
                &policy,
                worker,
                now,
                &mut report,
            ));
        }
        self.apply_acks(&acks, true).await?;
        Ok(report)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let before_ms = before.timestamp_millis();
        let mut total = 0u64;
        // Every entry a call reads leaves the range it reads (see the scripts), so each call
        // starts at the front of its index and does O(PRUNE_BATCH) work.
        loop {
            let (deleted, scanned) = self.prune_call(&self.scripts.prune_jobs, before_ms).await?;
            total += deleted;
            if scanned < PRUNE_BATCH as u64 {
                break;
            }
        }
        loop {
            let (deleted, more) = self.prune_call(&self.scripts.prune_pipelines, before_ms).await?;
            total += deleted;
            if more == 0 {
                break;
            }
        }
        Ok(total)
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        let v: Value = ::redis::cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&JOB_FIELDS[..])
            .query_async(&mut self.con())
            .await?;
        let f = strings(v, "job")?;
        if f.get(3).is_none_or(|s| s.is_none()) {
            return Ok(None);
        }
        record(id, f).map(Some)
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        // No index per state or finish time exists (the scripts keep only what claims need), so
        // walk ids downwards from the newest, a page per round trip, within a bounded window.
        let newest: Option<i64> = ::redis::cmd("GET")
            .arg(format!("{}:seq", self.prefix))
            .query_async(&mut self.con())
            .await?;
        let mut found = Vec::new();
        let mut high = newest.unwrap_or(0);
        let floor = (high - LIST_SCAN_WINDOW).max(0);
        while high > floor && found.len() < filter.limit {
            let low = (high - LIST_PAGE).max(floor);
            let mut pipe = ::redis::pipe();
            for id in (low + 1..=high).rev() {
                pipe.cmd("HMGET").arg(self.job_key(id)).arg(&JOB_FIELDS[..]);
            }
            let replies: Vec<Value> = pipe.query_async(&mut self.con()).await?;
            for (id, reply) in (low + 1..=high).rev().zip(replies) {
                let f = strings(reply, "job")?;
                if f.get(3).is_none_or(|s| s.is_none()) {
                    continue; // pruned
                }
                let job = record(id, f)?;
                if filter.matches(&job) {
                    found.push(job);
                    if found.len() == filter.limit {
                        break;
                    }
                }
            }
            high = low;
        }
        Ok(found)
    }

    async fn pipeline(&self, id: PipelineId) -> Result<Option<PipelineRecord>> {
        let v: Value = self
            .scripts
            .pipeline_read
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id)
            .invoke_async(&mut self.con())
            .await?;
        if matches!(v, Value::Nil | Value::Boolean(false)) {
            return Ok(None);
        }
        let mut parts = array(v, "pipeline reply")?.into_iter();
        let head = strings(parts.next().unwrap_or(Value::Nil), "pipeline")?;
        if head.len() != 6 {
            return Err(corrupt(format!("pipeline {id} reply has the wrong shape")));
        }
        let mut steps = Vec::new();
        for row in array(parts.next().unwrap_or(Value::Nil), "pipeline steps")? {
            let s = strings(row, "pipeline step")?;
            if s.len() != 7 {
                return Err(corrupt(format!("pipeline {id} step has the wrong shape")));
            }
            let job = int(&s[0], "job id")?;
            let needs: Vec<String> = match s[5].as_deref() {
                None | Some("") => Vec::new(),
                Some(json) => {
                    serde_json::from_str(json).map_err(|_| corrupt(format!("job {job} has unreadable needs")))?
                }
            };
            let mut s = s;
            steps.push(StepRecord {
                name: s[1].take().unwrap_or_default(),
                job,
                kind: req(s[2].take(), "kind")?,
                state: req(s[3].take(), "state")?.parse()?,
                attempt: int(&s[4], "attempt")?.max(0) as u32,
                needs,
                last_error: s[6].take(),
            });
        }
        steps.sort_by_key(|s| s.job);
        let mut head = head;
        Ok(Some(PipelineRecord {
            id,
            project: req(head[0].take(), "project")?,
            name: req(head[1].take(), "name")?,
            state: req(head[2].take(), "state")?.parse()?,
            supersede_key: head[3].take(),
            created_at: ms_time(int(&head[4], "created_at")?, "created_at")?,
            finished_at: opt_time(&head[5], "finished_at")?,
            steps,
        }))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let v: Value = self
            .scripts
            .stats
            .prepare_invoke()
            .arg(&self.prefix)
            .invoke_async(&mut self.con())
            .await?;
        let mut parts = array(v, "stats reply")?.into_iter();
        let now_ms = int(&opt_string(parts.next().unwrap_or(Value::Nil))?, "server time")?;
        let depth_raw = strings(parts.next().unwrap_or(Value::Nil), "depth")?;
        let oldest_raw = strings(parts.next().unwrap_or(Value::Nil), "oldest")?;
        let mut depth = Vec::with_capacity(depth_raw.len() / 2);
        for pair in depth_raw.chunks(2) {
            let field = pair[0].as_deref().ok_or_else(|| corrupt("empty depth counter"))?;
            let count = int(pair.get(1).unwrap_or(&None), "depth count")?;
            if count <= 0 {
                continue;
            }
            let (state, kind, project) = depth_field(field)?;
            depth.push(DepthRow {
                kind,
                project,
                state,
                count: count as u64,
            });
        }
        depth.sort_by(|a, b| (&a.kind, &a.project, a.state).cmp(&(&b.kind, &b.project, b.state)));
        let mut oldest_available_seconds = Vec::with_capacity(oldest_raw.len() / 2);
        for pair in oldest_raw.chunks(2) {
            let kind = pair[0].clone().ok_or_else(|| corrupt("empty kind"))?;
            let at = int(pair.get(1).unwrap_or(&None), "oldest run_at")?;
            oldest_available_seconds.push((kind, ((now_ms - at) as f64 / 1000.0).max(0.0)));
        }
        oldest_available_seconds.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(QueueStats {
            depth,
            oldest_available_seconds,
        })
    }

    async fn set_project_limits(&self, project: &str, limits: ProjectLimits) -> Result<()> {
        let _: Value = self
            .scripts
            .set_limits
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(project)
            .arg(limits.max_running.map(|v| v.to_string()).unwrap_or_default())
            .arg(limits.jobs_per_minute.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async(&mut self.con())
            .await?;
        Ok(())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.notify.wait(timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Candidate, fair_quotas};
    use crate::pipeline::{PipelineState, PipelineStep};
    use serde_json::json;

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

    #[tokio::test]
    async fn enqueue_claim_ack() {
        let q = queue().await;
        q.ping().await.unwrap();
        let out = q
            .enqueue(vec![NewJob::new("email", "acme", json!({"to": "a@b.c", "n": 1}))])
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(!out[0].duplicate);
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "email", "acme", JobState::Available), 1);
        assert_eq!(stats.oldest_available_seconds.len(), 1);

        let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let job = &claimed[0];
        assert_eq!(job.id, out[0].id);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.kind, "email");
        assert_eq!(job.project, "acme");
        assert_eq!(job.payload, json!({"to": "a@b.c", "n": 1}));
        assert_eq!(job.policy, JobPolicy::default());
        assert!(q.claim(&request(&["email"], 10)).await.unwrap().is_empty());

        let record = q.job(job.id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Running);
        assert_eq!(record.worker.as_deref(), Some("w1"));
        assert!(record.lease_expires_at.is_some());
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "email", "acme", JobState::Running), 1);
        assert_eq!(count(&stats, "email", "acme", JobState::Available), 0);
        assert!(stats.oldest_available_seconds.is_empty());

        complete(&q, &claimed).await;
        // A second (stale) ack is ignored.
        q.acknowledge(vec![Ack::new(job, Outcome::Dead { error: "late".into() })])
            .await
            .unwrap();
        let record = q.job(job.id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Completed);
        assert!(record.finished_at.is_some());
        assert_eq!(record.worker, None);
        assert_eq!(record.lease_expires_at, None);
        assert!(q.stats().await.unwrap().depth.is_empty());

        // Retry with backoff, then a dead attempt.
        let id = q
            .enqueue(vec![NewJob::new("email", "acme", json!(null))])
            .await
            .unwrap()[0]
            .id;
        let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
        q.acknowledge(vec![Ack::new(
            &claimed[0],
            Outcome::Retry {
                at: Utc::now() - chrono::Duration::seconds(1),
                error: "boom".into(),
            },
        )])
        .await
        .unwrap();
        let record = q.job(id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Scheduled);
        assert_eq!(record.last_error.as_deref(), Some("boom"));
        let claimed = q.claim(&request(&["email"], 10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempt, 2);
        q.acknowledge(vec![Ack::new(&claimed[0], Outcome::Dead { error: "x".into() })])
            .await
            .unwrap();
        assert_eq!(count(&q.stats().await.unwrap(), "email", "acme", JobState::Dead), 1);
        q.retry(id).await.unwrap();
        let record = q.job(id).await.unwrap().unwrap();
        assert_eq!((record.state, record.attempt), (JobState::Available, 0));
        assert!(matches!(q.retry(id).await, Err(QueueError::NotRetryable { .. })));
        assert!(matches!(q.retry(999_999).await, Err(QueueError::JobNotFound(_))));
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn unique_keys_deduplicate() {
        let q = queue().await;
        let a = q
            .enqueue(vec![
                NewJob::new("k", "p", json!(1)).unique_key("u1"),
                NewJob::new("k", "p", json!(2)).unique_key("u1"),
                NewJob::new("k", "p", json!(3)),
            ])
            .await
            .unwrap();
        assert!(!a[0].duplicate);
        assert_eq!(
            a[1],
            Enqueued {
                id: a[0].id,
                duplicate: true
            }
        );
        assert!(!a[2].duplicate);
        let b = q
            .enqueue(vec![NewJob::new("k", "p", json!(4)).unique_key("u1")])
            .await
            .unwrap();
        assert_eq!(
            b[0],
            Enqueued {
                id: a[0].id,
                duplicate: true
            }
        );
        assert_eq!(count(&q.stats().await.unwrap(), "k", "p", JobState::Available), 2);
        // The key holds until the job is pruned.
        complete(&q, &q.claim(&request(&["k"], 10)).await.unwrap()).await;
        let c = q
            .enqueue(vec![NewJob::new("k", "p", json!(5)).unique_key("u1")])
            .await
            .unwrap();
        assert!(c[0].duplicate);
        assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(5)).await.unwrap(), 2);
        assert!(q.job(a[0].id).await.unwrap().is_none());
        let d = q
            .enqueue(vec![NewJob::new("k", "p", json!(6)).unique_key("u1")])
            .await
            .unwrap();
        assert!(!d[0].duplicate);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn priority_then_age_order_and_unhandled_kinds_stay() {
        let q = queue().await;
        let ids: Vec<JobId> = q
            .enqueue(vec![
                NewJob::new("a", "p", json!(0)).with_priority(5),
                NewJob::new("a", "p", json!(1)).with_priority(1),
                NewJob::new("b", "p", json!(2)).with_priority(3),
                NewJob::new("a", "p", json!(3)).with_priority(1),
                NewJob::new("c", "p", json!(4)).with_priority(0),
                NewJob::new("a", "p", json!(5)).with_priority(-2),
            ])
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let mut order = Vec::new();
        loop {
            let got = q.claim(&request(&["a", "b"], 1)).await.unwrap();
            if got.is_empty() {
                break;
            }
            order.push(got[0].id);
        }
        assert_eq!(order, vec![ids[5], ids[1], ids[3], ids[2], ids[0]]);
        assert_eq!(q.job(ids[4]).await.unwrap().unwrap().state, JobState::Available);
        let got = q.claim(&request(&["c"], 5)).await.unwrap();
        assert_eq!(got.len(), 1);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn pipeline_fan_out_fan_in() {
        let q = queue().await;
        let new = || NewPipeline {
            project: "p".into(),
            name: "diamond".into(),
            supersede_key: None,
            unique_key: Some("delivery-1".into()),
            steps: vec![
                step("d", &["b", "c"]),
                step("b", &["a"]),
                step("c", &["a"]),
                step("a", &[]),
            ],
        };
        let run = q.enqueue_pipeline(new()).await.unwrap();
        assert!(!run.duplicate);
        assert_eq!(q.enqueue_pipeline(new()).await.unwrap().id, run.id);
        let all = ["a", "b", "c", "d"];

        let first = q.claim(&request(&all, 10)).await.unwrap();
        assert_eq!(first.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(first[0].pipeline, Some(run.id));
        assert_eq!(first[0].step.as_deref(), Some("a"));
        complete(&q, &first).await;

        let mut second = q.claim(&request(&all, 10)).await.unwrap();
        second.sort_by(|x, y| x.kind.cmp(&y.kind));
        assert_eq!(second.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        complete(&q, &second[..1]).await;
        assert!(q.claim(&request(&all, 10)).await.unwrap().is_empty(), "d waits for c");
        // An ack that does not name the pipeline still moves it on.
        q.acknowledge(vec![Ack {
            pipeline: None,
            ..Ack::new(&second[1], Outcome::Completed)
        }])
        .await
        .unwrap();

        let third = q.claim(&request(&all, 10)).await.unwrap();
        assert_eq!(third.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["d"]);
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Running);
        complete(&q, &third).await;

        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Succeeded);
        assert!(record.finished_at.is_some());
        assert_eq!(record.steps.len(), 4);
        assert!(record.steps.iter().all(|s| s.state == JobState::Completed));
        assert_eq!(record.steps[0].name, "a");
        let d = record.steps.iter().find(|s| s.name == "d").unwrap();
        assert_eq!(d.needs, vec!["b", "c"]);
        assert!(q.stats().await.unwrap().depth.is_empty());
        assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(5)).await.unwrap(), 4);
        assert!(q.pipeline(run.id).await.unwrap().is_none());
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn failed_step_stops_the_run_and_retry_reopens_it() {
        let q = queue().await;
        let run = q
            .enqueue_pipeline(NewPipeline {
                project: "p".into(),
                name: "t".into(),
                supersede_key: Some("svc:main".into()),
                unique_key: None,
                steps: vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])],
            })
            .await
            .unwrap();
        let got = q.claim(&request(&["a", "b", "c"], 10)).await.unwrap();
        assert_eq!(got.len(), 2);
        let a = got.iter().find(|j| j.kind == "a").unwrap();
        let b = got.iter().find(|j| j.kind == "b").unwrap();
        q.acknowledge(vec![Ack::new(a, Outcome::Dead { error: "bad".into() })])
            .await
            .unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Failed);
        let c = record.steps.iter().find(|s| s.name == "c").unwrap();
        assert_eq!(c.state, JobState::Cancelled);
        // b is running: its worker is asked to stop.
        let hb = q.heartbeat("w1", &[b.lease()], Duration::from_secs(30)).await.unwrap();
        assert_eq!(hb.cancel, vec![b.id]);
        q.acknowledge(vec![Ack::new(b, Outcome::Cancelled { reason: "stop".into() })])
            .await
            .unwrap();

        q.retry(a.id).await.unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Running);
        let states: Vec<_> = record.steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
        assert_eq!(
            states,
            vec![
                ("a", JobState::Available),
                ("b", JobState::Available),
                ("c", JobState::Pending)
            ]
        );
        // A newer run with the same supersede key cancels this one.
        let newer = q
            .enqueue_pipeline(NewPipeline {
                project: "p".into(),
                name: "t".into(),
                supersede_key: Some("svc:main".into()),
                unique_key: None,
                steps: vec![step("a", &[])],
            })
            .await
            .unwrap();
        assert_eq!(newer.superseded, vec![run.id]);
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Superseded);
        assert!(record.steps.iter().all(|s| s.state == JobState::Cancelled));
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "a", "p", JobState::Available), 1);
        assert_eq!(count(&stats, "c", "p", JobState::Pending), 0);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn max_running_caps_across_claims_and_processes() {
        let q1 = queue().await;
        let q2 = RedisQueue::connect_with_prefix(&url(), q1.prefix()).await.unwrap();
        q1.set_project_limits(
            "capped",
            ProjectLimits {
                max_running: Some(2),
                jobs_per_minute: None,
            },
        )
        .await
        .unwrap();
        q1.enqueue((0..5).map(|i| NewJob::new("k", "capped", json!(i))).collect())
            .await
            .unwrap();
        let first = q1.claim(&request(&["k"], 10)).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(q2.claim(&request(&["k"], 10)).await.unwrap().is_empty());
        complete(&q2, &first[..1]).await;
        let again = q2.claim(&request(&["k"], 10)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert!(q1.claim(&request(&["k"], 10)).await.unwrap().is_empty());
        cleanup(&q1).await;
    }

    #[tokio::test]
    async fn claims_split_fairly_like_fair_quotas() {
        let q = queue().await;
        for (project, limits) in [
            (
                "a",
                ProjectLimits {
                    max_running: Some(2),
                    jobs_per_minute: None,
                },
            ),
            (
                "c",
                ProjectLimits {
                    max_running: Some(0),
                    jobs_per_minute: None,
                },
            ),
            (
                "d",
                ProjectLimits {
                    max_running: None,
                    jobs_per_minute: Some(3),
                },
            ),
        ] {
            q.set_project_limits(project, limits).await.unwrap();
        }
        for project in ["a", "b", "c", "d"] {
            q.enqueue((0..20).map(|i| NewJob::new("k", project, json!(i))).collect())
                .await
                .unwrap();
        }
        let candidates = vec![
            Candidate {
                project: "a".into(),
                room: Some(2),
            },
            Candidate {
                project: "b".into(),
                room: None,
            },
            Candidate {
                project: "c".into(),
                room: Some(0),
            },
            Candidate {
                project: "d".into(),
                room: Some(3),
            },
        ];
        let expected = fair_quotas(&candidates, 12, 0);
        let got = q.claim(&request(&["k"], 12)).await.unwrap();
        let mut per: HashMap<String, u32> = HashMap::new();
        for job in &got {
            *per.entry(job.project.clone()).or_default() += 1;
        }
        let mut per: Vec<(String, u32)> = per.into_iter().collect();
        per.sort();
        assert_eq!(per, expected);
        // The rate limit's tokens are spent: d gets nothing more for now.
        let more = q.claim(&request(&["k"], 50)).await.unwrap();
        assert!(more.iter().all(|j| j.project == "b"), "{more:?}");
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn heartbeat_reports_lost_after_rescue() {
        let q = queue().await;
        let id = q
            .enqueue(vec![NewJob::new("k", "p", json!({})).with_policy(JobPolicy {
                max_attempts: 2,
                ..JobPolicy::default()
            })])
            .await
            .unwrap()[0]
            .id;
        let mut req = request(&["k"], 1);
        req.lease = Duration::from_millis(50);
        let job = q.claim(&req).await.unwrap().remove(0);
        let hb = q
            .heartbeat("w1", &[job.lease()], Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(hb, HeartbeatReply::default());
        let other = q
            .heartbeat("w2", &[job.lease()], Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(other.lost, vec![id]);
        assert!(q.rescue_expired().await.unwrap().retried.is_empty(), "lease still live");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let report = q.rescue_expired().await.unwrap();
        assert_eq!(report.retried, vec![id]);
        let hb = q
            .heartbeat("w1", &[job.lease()], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(hb.lost, vec![id]);
        // The stale lease cannot finish the job.
        complete(&q, std::slice::from_ref(&job)).await;
        let record = q.job(id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Scheduled);
        assert!(record.last_error.unwrap().contains("lease expired"));
        assert_eq!(q.stats().await.unwrap().depth.len(), 1);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn cancel_scheduled_and_running() {
        let q = queue().await;
        let later = Utc::now() + chrono::Duration::hours(1);
        let ids: Vec<JobId> = q
            .enqueue(vec![
                NewJob::new("k", "p", json!(1)).run_at(later),
                NewJob::new("k", "p", json!(2)),
            ])
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(q.job(ids[0]).await.unwrap().unwrap().state, JobState::Scheduled);
        let running = q.claim(&request(&["k"], 10)).await.unwrap();
        assert_eq!(running.len(), 1, "the delayed job is not due");
        assert_eq!(q.cancel(ids[0]).await.unwrap(), CancelOutcome::Cancelled);
        assert_eq!(q.cancel(ids[1]).await.unwrap(), CancelOutcome::Requested);
        assert_eq!(
            q.cancel(ids[0]).await.unwrap(),
            CancelOutcome::AlreadyFinished(JobState::Cancelled)
        );
        assert!(matches!(q.cancel(123_456_789).await, Err(QueueError::JobNotFound(_))));
        assert!(q.job(ids[1]).await.unwrap().unwrap().cancel_requested);
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "k", "p", JobState::Scheduled), 0);
        assert_eq!(count(&stats, "k", "p", JobState::Running), 1);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn enqueue_wakes_waiters_and_bulk_enqueue_is_chunked() {
        let q = Arc::new(queue().await);
        // Let the subscription settle.
        q.wait_for_work(Duration::from_millis(200)).await;
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                q.wait_for_work(Duration::from_secs(5)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let jobs: Vec<NewJob> = (0..2_500)
            .map(|i| NewJob::new("bulk", "p", json!({ "i": i })))
            .collect();
        let out = q.enqueue(jobs).await.unwrap();
        assert_eq!(out.len(), 2_500);
        assert!(out.windows(2).all(|w| w[0].id < w[1].id));
        assert!(waiter.await.unwrap() < Duration::from_secs(2));
        assert_eq!(
            count(&q.stats().await.unwrap(), "bulk", "p", JobState::Available),
            2_500
        );
        let got = q.claim(&request(&["bulk"], 2_000)).await.unwrap();
        assert_eq!(got.len(), 2_000);
        assert_eq!(got[0].payload, json!({ "i": 0 }));
        complete(&q, &got).await;
        assert_eq!(count(&q.stats().await.unwrap(), "bulk", "p", JobState::Available), 500);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn connection_errors_hide_the_url() {
        let err = RedisQueue::connect("redis://user:s3cretpw@127.0.0.1:1/")
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(err.is_transient(), "{err}");
        let message = err.to_string();
        assert!(!message.contains("s3cretpw"), "{message}");
    }

    #[tokio::test]
    async fn delayed_jobs_become_due_and_prune_spares_running_pipelines() {
        let q = queue().await;
        assert!(q.job(42).await.unwrap().is_none());
        assert!(q.pipeline(42).await.unwrap().is_none());
        let soon = Utc::now() + chrono::Duration::milliseconds(300);
        let id = q
            .enqueue(vec![NewJob::new("k", "p", json!(1)).run_at(soon)])
            .await
            .unwrap()[0]
            .id;
        assert!(q.claim(&request(&["k"], 10)).await.unwrap().is_empty());
        assert_eq!(count(&q.stats().await.unwrap(), "k", "p", JobState::Scheduled), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = q.claim(&request(&["k"], 10)).await.unwrap();
        assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(got[0].run_at.timestamp_millis(), soon.timestamp_millis());
        complete(&q, &got).await;

        let run = q
            .enqueue_pipeline(NewPipeline {
                project: "p".into(),
                name: "t".into(),
                supersede_key: None,
                unique_key: None,
                steps: vec![step("a", &[]), step("b", &["a"])],
            })
            .await
            .unwrap();
        complete(&q, &q.claim(&request(&["a"], 10)).await.unwrap()).await;
        let later = Utc::now() + chrono::Duration::seconds(5);
        // The plain job goes; step `a` stays while its run is still going.
        assert_eq!(q.prune(later).await.unwrap(), 1);
        assert!(q.job(id).await.unwrap().is_none());
        assert_eq!(q.pipeline(run.id).await.unwrap().unwrap().steps.len(), 2);
        complete(&q, &q.claim(&request(&["b"], 10)).await.unwrap()).await;
        assert_eq!(
            q.pipeline(run.id).await.unwrap().unwrap().state,
            PipelineState::Succeeded
        );
        assert_eq!(q.prune(later).await.unwrap(), 2);
        assert!(q.pipeline(run.id).await.unwrap().is_none());
        assert_eq!(q.prune(later).await.unwrap(), 0);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn released_jobs_return_without_spending_an_attempt() {
        let q = queue().await;
        let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
        let job = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
        q.acknowledge(vec![Ack::new(&job, Outcome::Released)]).await.unwrap();
        let record = q.job(id).await.unwrap().unwrap();
        assert_eq!((record.state, record.attempt), (JobState::Available, 0));
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "k", "p", JobState::Available), 1);
        assert_eq!(count(&stats, "k", "p", JobState::Running), 0);
        assert_eq!(q.claim(&request(&["k"], 1)).await.unwrap()[0].attempt, 1);
        cleanup(&q).await;
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

    #[tokio::test]
    async fn stale_tokens_cannot_ack_or_heartbeat_after_release_or_retry() {
        let q = queue().await;
        let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
        let first = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
        assert_eq!((first.attempt, first.lease_token), (1, 1));
        q.acknowledge(vec![Ack::new(&first, Outcome::Released)]).await.unwrap();
        // Same attempt number again, but a new token.
        let second = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
        assert_eq!((second.attempt, second.lease_token), (1, 2));
        let hb = q
            .heartbeat("w1", &[first.lease()], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(hb.lost, vec![id]);
        q.acknowledge(vec![Ack::new(&first, Outcome::Dead { error: "stale".into() })])
            .await
            .unwrap();
        assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Running);
        let hb = q
            .heartbeat("w1", &[second.lease()], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(hb, HeartbeatReply::default());
        q.acknowledge(vec![Ack::new(&second, Outcome::Dead { error: "bad".into() })])
            .await
            .unwrap();

        // An operator's retry resets the attempt, never the token.
        q.retry(id).await.unwrap();
        let third = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
        assert_eq!((third.attempt, third.lease_token), (1, 3));
        for stale in [&first, &second] {
            let hb = q
                .heartbeat("w1", &[stale.lease()], Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(hb.lost, vec![id]);
            complete(&q, std::slice::from_ref(stale)).await;
            assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Running);
        }
        complete(&q, std::slice::from_ref(&third)).await;
        assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Completed);
        assert!(q.stats().await.unwrap().depth.is_empty());
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn requested_cancellation_wins_over_retry_and_release() {
        let q = queue().await;
        let run = q
            .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"]), step("c", &[])], None))
            .await
            .unwrap();
        let got = q.claim(&request(&["a", "c"], 10)).await.unwrap();
        assert_eq!(got.len(), 2);
        let a = got.iter().find(|j| j.kind == "a").unwrap();
        let c = got.iter().find(|j| j.kind == "c").unwrap();
        assert_eq!(q.cancel(a.id).await.unwrap(), CancelOutcome::Requested);
        // The worker's attempt failed (or it ignored the request): retried, it would run again.
        q.acknowledge(vec![Ack::new(
            a,
            Outcome::Retry {
                at: Utc::now(),
                error: "boom".into(),
            },
        )])
        .await
        .unwrap();
        let record = q.job(a.id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Cancelled);
        assert_eq!(record.last_error.as_deref(), Some("cancelled while running"));
        assert!(record.finished_at.is_some());
        assert!(!record.cancel_requested);
        let run_record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(run_record.state, PipelineState::Cancelled);
        assert_eq!(state_of(&run_record, "b"), JobState::Cancelled);
        // c is still running: asked to stop; its hand-back ends it cancelled too.
        let hb = q.heartbeat("w1", &[c.lease()], Duration::from_secs(30)).await.unwrap();
        assert_eq!(hb.cancel, vec![c.id]);
        q.acknowledge(vec![Ack::new(c, Outcome::Released)]).await.unwrap();
        let record = q.job(c.id).await.unwrap().unwrap();
        assert_eq!((record.state, record.attempt), (JobState::Cancelled, 1));
        assert!(q.claim(&request(&["a", "b", "c"], 10)).await.unwrap().is_empty());
        assert!(q.stats().await.unwrap().depth.is_empty());

        // A plain job handed back (ack not naming a pipeline either way) is cancelled as well.
        let id = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
        let job = q.claim(&request(&["k"], 1)).await.unwrap().remove(0);
        assert_eq!(q.cancel(id).await.unwrap(), CancelOutcome::Requested);
        q.acknowledge(vec![Ack::new(&job, Outcome::Released)]).await.unwrap();
        assert_eq!(q.job(id).await.unwrap().unwrap().state, JobState::Cancelled);
        assert!(q.claim(&request(&["k"], 1)).await.unwrap().is_empty());
        assert!(q.stats().await.unwrap().depth.is_empty());
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn requested_cancellation_wins_over_the_reaper() {
        let q = queue().await;
        let run = q
            .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"])], None))
            .await
            .unwrap();
        let mut req = request(&["a"], 1);
        req.lease = Duration::from_millis(50);
        let a = q.claim(&req).await.unwrap().remove(0);
        assert_eq!(q.cancel(a.id).await.unwrap(), CancelOutcome::Requested);
        tokio::time::sleep(Duration::from_millis(120)).await;
        q.rescue_expired().await.unwrap();
        let record = q.job(a.id).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Cancelled);
        assert_eq!(record.last_error.as_deref(), Some("cancelled while running"));
        let run_record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(run_record.state, PipelineState::Cancelled);
        assert_eq!(state_of(&run_record, "b"), JobState::Cancelled);
        assert!(q.claim(&request(&["a", "b"], 10)).await.unwrap().is_empty());
        assert!(q.stats().await.unwrap().depth.is_empty());
        // The late worker cannot bring it back.
        complete(&q, std::slice::from_ref(&a)).await;
        assert_eq!(q.job(a.id).await.unwrap().unwrap().state, JobState::Cancelled);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn retry_of_a_superseded_runs_step_is_refused() {
        let q = queue().await;
        let old = q
            .enqueue_pipeline(pipeline(vec![step("a", &[])], Some("svc")))
            .await
            .unwrap();
        let newer = q
            .enqueue_pipeline(pipeline(vec![step("a", &[])], Some("svc")))
            .await
            .unwrap();
        assert_eq!(newer.superseded, vec![old.id]);
        let before = q.pipeline(old.id).await.unwrap().unwrap();
        let job = before.steps[0].job;
        assert_eq!(before.steps[0].state, JobState::Cancelled);
        match q.retry(job).await {
            Err(QueueError::SupersededPipeline { id, pipeline }) => assert_eq!((id, pipeline), (job, old.id)),
            other => panic!("expected SupersededPipeline, got {other:?}"),
        }
        assert_eq!(q.pipeline(old.id).await.unwrap().unwrap(), before);
        assert_eq!(count(&q.stats().await.unwrap(), "a", "p", JobState::Available), 1);
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn retried_step_waits_for_its_needs() {
        let q = queue().await;
        let run = q
            .enqueue_pipeline(pipeline(vec![step("build", &[]), step("deploy", &["build"])], None))
            .await
            .unwrap();
        let build = q.claim(&request(&["build"], 1)).await.unwrap().remove(0);
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        let deploy = record.steps.iter().find(|s| s.name == "deploy").unwrap().job;
        // The operator cancels the pending deploy; the run stops and build is asked to stop.
        assert_eq!(q.cancel(deploy).await.unwrap(), CancelOutcome::Cancelled);
        q.acknowledge(vec![Ack::new(&build, Outcome::Cancelled { reason: "stop".into() })])
            .await
            .unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Cancelled);

        let before = Utc::now() - chrono::Duration::seconds(1);
        q.retry(deploy).await.unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Running);
        assert_eq!(state_of(&record, "build"), JobState::Available);
        assert_eq!(
            state_of(&record, "deploy"),
            JobState::Pending,
            "build has not completed"
        );
        let d = q.job(deploy).await.unwrap().unwrap();
        assert_eq!((d.attempt, d.finished_at, d.cancel_requested), (0, None, false));
        assert!(d.run_at > before);
        let stats = q.stats().await.unwrap();
        assert_eq!(count(&stats, "deploy", "p", JobState::Pending), 1);
        assert_eq!(count(&stats, "deploy", "p", JobState::Available), 0);
        assert_eq!(count(&stats, "build", "p", JobState::Available), 1);
        assert!(q.claim(&request(&["deploy"], 1)).await.unwrap().is_empty());

        let build = q.claim(&request(&["build"], 1)).await.unwrap().remove(0);
        assert_eq!((build.attempt, build.lease_token), (1, 2));
        complete(&q, &[build]).await;
        let deploy_job = q.claim(&request(&["deploy"], 1)).await.unwrap().remove(0);
        assert_eq!(deploy_job.id, deploy);
        complete(&q, &[deploy_job]).await;
        assert_eq!(
            q.pipeline(run.id).await.unwrap().unwrap().state,
            PipelineState::Succeeded
        );
        assert!(q.stats().await.unwrap().depth.is_empty());
        cleanup(&q).await;
    }

    async fn zcount_before(q: &RedisQueue, key: &str, before: DateTime<Utc>) -> i64 {
        ::redis::cmd("ZCOUNT")
            .arg(format!("{}:{key}", q.prefix))
            .arg("-inf")
            .arg(format!("({}", before.timestamp_millis()))
            .query_async(&mut q.con())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_kind_of_a_claim_gets_a_share_of_the_candidates() {
        let q = queue().await;
        // More projects with work of the first kind than one claim considers...
        let n = MAX_PROJECTS_PER_CLAIM + 44;
        q.enqueue((0..n).map(|i| NewJob::new("a", format!("p{i:04}"), json!(i))).collect())
            .await
            .unwrap();
        // ...must not hide the only project with work of the second.
        let b = q.enqueue(vec![NewJob::new("b", "zz", json!(0))]).await.unwrap()[0].id;
        let got = q.claim(&request(&["a", "b"], MAX_CLAIM)).await.unwrap();
        assert!(got.iter().any(|j| j.id == b), "kind b starved: {} claimed", got.len());
        assert_eq!(
            got.len(),
            MAX_PROJECTS_PER_CLAIM,
            "one job from each of the most projects"
        );
        // Whichever kind the rotation starts at, the other still gets its share.
        let c = q.enqueue(vec![NewJob::new("b", "zz", json!(1))]).await.unwrap()[0].id;
        let got = q.claim(&request(&["a", "b"], MAX_CLAIM)).await.unwrap();
        assert!(got.iter().any(|j| j.id == c), "kind b starved: {} claimed", got.len());
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn projects_without_room_take_no_candidate_slots() {
        let q = queue().await;
        let capped: Vec<String> = (0..400).map(|i| format!("capped{i:03}")).collect();
        let open: Vec<String> = (0..100).map(|i| format!("open{i:03}")).collect();
        for project in &capped {
            q.set_project_limits(
                project,
                ProjectLimits {
                    max_running: Some(0),
                    jobs_per_minute: None,
                },
            )
            .await
            .unwrap();
        }
        q.enqueue(
            capped
                .iter()
                .chain(&open)
                .map(|p| NewJob::new("k", p, json!(0)))
                .collect(),
        )
        .await
        .unwrap();
        // 500 projects have work, but only 100 may start any: one claim serves all of those.
        let got = q.claim(&request(&["k"], MAX_CLAIM)).await.unwrap();
        assert_eq!(got.len(), open.len(), "capped projects crowded out open ones");
        assert!(got.iter().all(|j| j.project.starts_with("open")));
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn the_token_buckets_clock_never_moves_back() {
        let q = queue().await;
        q.set_project_limits(
            "r",
            ProjectLimits {
                max_running: None,
                jobs_per_minute: Some(60),
            },
        )
        .await
        .unwrap();
        q.enqueue((0..5).map(|i| NewJob::new("k", "r", json!(i))).collect())
            .await
            .unwrap();
        // A refill stamped ahead of this server's clock (e.g. by a primary before a failover).
        let ahead = Utc::now().timestamp_millis() + 60_000;
        let key = format!("{}:limits:r", q.prefix);
        let _: i64 = ::redis::cmd("HSET")
            .arg(&key)
            .arg("tokens")
            .arg(2)
            .arg("refilled_at_ms")
            .arg(ahead)
            .query_async(&mut q.con())
            .await
            .unwrap();
        assert_eq!(q.claim(&request(&["k"], 10)).await.unwrap().len(), 2);
        let at: i64 = ::redis::cmd("HGET")
            .arg(&key)
            .arg("refilled_at_ms")
            .query_async(&mut q.con())
            .await
            .unwrap();
        assert_eq!(at, ahead, "refilled_at moved backwards");
        assert!(q.claim(&request(&["k"], 10)).await.unwrap().is_empty());
        cleanup(&q).await;
    }

    async fn prune_pipelines_call(q: &RedisQueue, before_ms: i64, budget: usize) -> (u64, u64) {
        let mut inv = q.scripts.prune_pipelines.prepare_invoke();
        inv.arg(&q.prefix).arg(before_ms).arg(budget);
        inv.invoke_async(&mut q.con()).await.unwrap()
    }

    #[tokio::test]
    async fn prune_leaves_nothing_before_the_cutoff_to_step_over() {
        let q = queue().await;
        let plain = q.enqueue(vec![NewJob::new("k", "p", json!(1))]).await.unwrap()[0].id;
        complete(&q, &q.claim(&request(&["k"], 1)).await.unwrap()).await;
        // A running pipeline with a finished step: the step is kept.
        let running = q
            .enqueue_pipeline(pipeline(vec![step("a", &[]), step("b", &["a"])], None))
            .await
            .unwrap();
        complete(&q, &q.claim(&request(&["a"], 1)).await.unwrap()).await;
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(q.prune(later).await.unwrap(), 1);
        assert!(q.job(plain).await.unwrap().is_none());
        assert_eq!(q.pipeline(running.id).await.unwrap().unwrap().steps.len(), 2);
        // What is kept is out of the range the next prune with this cutoff scans, so every
        // prune script call starts at the front (no offset to step over) and does O(batch) work.
        assert_eq!(zcount_before(&q, "finished", later).await, 0);
        assert_eq!(zcount_before(&q, "pfinished", later).await, 0);

        // A stopped run with a step that finished after the cutoff is kept, and out of range too.
        let stopped = q
            .enqueue_pipeline(pipeline(vec![step("c", &[]), step("d", &[])], None))
            .await
            .unwrap();
        let cd = q.claim(&request(&["c", "d"], 2)).await.unwrap();
        let c = cd.iter().find(|j| j.kind == "c").unwrap();
        let d = cd.iter().find(|j| j.kind == "d").unwrap();
        q.acknowledge(vec![Ack::new(c, Outcome::Dead { error: "x".into() })])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cutoff = Utc::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.acknowledge(vec![Ack::new(d, Outcome::Cancelled { reason: "stop".into() })])
            .await
            .unwrap();
        assert_eq!(q.prune(cutoff).await.unwrap(), 0);
        assert_eq!(zcount_before(&q, "finished", cutoff).await, 0);
        assert_eq!(zcount_before(&q, "pfinished", cutoff).await, 0);
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(q.prune(later).await.unwrap(), 2, "the stopped run's steps");
        assert!(q.pipeline(stopped.id).await.unwrap().is_none());
        // The running pipeline's kept step comes back to prune once its run is over.
        complete(&q, &q.claim(&request(&["b"], 1)).await.unwrap()).await;
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(q.prune(later).await.unwrap(), 2);
        assert!(q.pipeline(running.id).await.unwrap().is_none());
        assert_eq!(zcount_before(&q, "finished", later).await, 0);
        assert_eq!(zcount_before(&q, "pfinished", later).await, 0);

        // A call stops after its budget of runs and steps read (but reads at least one run).
        for _ in 0..3 {
            let run = q
                .enqueue_pipeline(pipeline(vec![step("x", &[]), step("y", &[])], None))
                .await
                .unwrap();
            let record = q.pipeline(run.id).await.unwrap().unwrap();
            q.cancel(record.steps[0].job).await.unwrap();
        }
        let later = (Utc::now() + chrono::Duration::seconds(5)).timestamp_millis();
        assert_eq!(
            prune_pipelines_call(&q, later, 1).await,
            (2, 1),
            "one run of 2 steps, more to do"
        );
        assert_eq!(prune_pipelines_call(&q, later, 4).await, (2, 1));
        assert_eq!(prune_pipelines_call(&q, later, 100).await, (2, 0));
        assert_eq!(prune_pipelines_call(&q, later, 100).await, (0, 0));
        cleanup(&q).await;
    }

    #[tokio::test]
    async fn prune_keeps_a_pipelines_steps_together() {
        let q = queue().await;
        let run = q
            .enqueue_pipeline(pipeline(
                vec![
                    step("a", &[]),
                    step("b", &["a"]),
                    step("c", &["a"]),
                    step("d", &["b", "c"]),
                    step("e", &["d"]),
                ],
                None,
            ))
            .await
            .unwrap();
        complete(&q, &q.claim(&request(&["a"], 1)).await.unwrap()).await;
        let bc = q.claim(&request(&["b", "c"], 2)).await.unwrap();
        let b = bc.iter().find(|j| j.kind == "b").unwrap();
        let c = bc.iter().find(|j| j.kind == "c").unwrap();
        q.acknowledge(vec![Ack::new(b, Outcome::Dead { error: "failed".into() })])
            .await
            .unwrap();
        let record = q.pipeline(run.id).await.unwrap().unwrap();
        assert_eq!(record.state, PipelineState::Failed);
        assert_eq!(state_of(&record, "d"), JobState::Cancelled);
        assert!(q.job(c.id).await.unwrap().unwrap().cancel_requested);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cutoff = Utc::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.acknowledge(vec![Ack::new(
            c,
            Outcome::Cancelled {
                reason: "stopped".into(),
            },
        )])
        .await
        .unwrap();
        assert_eq!(
            q.prune(cutoff).await.unwrap(),
            0,
            "c finished after the cutoff: keep the run"
        );
        assert_eq!(q.pipeline(run.id).await.unwrap().unwrap().steps.len(), 5);
        assert_eq!(q.prune(cutoff).await.unwrap(), 0);
        assert_eq!(q.prune(Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 5);
        assert!(q.pipeline(run.id).await.unwrap().is_none());
        assert!(q.job(c.id).await.unwrap().is_none());
        assert!(q.stats().await.unwrap().depth.is_empty());
        cleanup(&q).await;
    }

    /// Collects the messages of warnings logged while it is the current subscriber.
    struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut text = String::new();
                event.record(&mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    text.push_str(&format!("{}={value:?} ", field.name()));
                });
                self.0.lock().unwrap().push(text);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn warnings_of(f: impl FnOnce()) -> Vec<String> {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Warnings(seen.clone()), f);
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn an_evicting_redis_is_warned_about() {
        for policy in ["allkeys-lru", "volatile-ttl", "allkeys-random"] {
            let warned = warnings_of(|| warn_if_evicting(Some(policy)));
            assert_eq!(warned.len(), 1, "{policy}: {warned:?}");
            assert!(warned[0].contains("maxmemory-policy noeviction"), "{warned:?}");
            assert!(warned[0].contains("lose jobs"), "{warned:?}");
            assert!(warned[0].contains(policy), "{warned:?}");
        }
        // Nothing to say with noeviction, or when CONFIG is not allowed.
        assert!(warnings_of(|| warn_if_evicting(Some("noeviction"))).is_empty());
        assert!(warnings_of(|| warn_if_evicting(None)).is_empty());
        // connect reads the policy of the server.
        let q = queue().await;
        let mut con = q.con();
        let expected: Vec<String> = ::redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(maxmemory_policy(&mut con).await, expected.get(1).cloned());
        assert!(expected.get(1).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_job_is_dead_lettered_and_the_rest_of_the_claim_served() {
        let q = queue().await;
        let ids = q
            .enqueue(vec![NewJob::new("k", "p", json!({})), NewJob::new("k", "p", json!({}))])
            .await
            .unwrap();
        let _: () = ::redis::cmd("HSET")
            .arg(format!("{}:job:{}", q.prefix(), ids[0].id))
            .arg("payload")
            .arg("{not json")
            .query_async(&mut q.con())
            .await
            .unwrap();
        let claimed = q.claim(&request(&["k"], 10)).await.unwrap();
        assert_eq!(claimed.len(), 1, "the readable job is still served");
        assert_eq!(claimed[0].id, ids[1].id);
        let bad = q.job(ids[0].id).await.unwrap().unwrap();
        assert_eq!(bad.state, JobState::Dead);
        assert!(bad.last_error.unwrap().contains("fix or re-enqueue"));
        cleanup(&q).await;
    }
}
