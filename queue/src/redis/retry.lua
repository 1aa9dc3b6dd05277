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
