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
