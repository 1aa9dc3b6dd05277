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
