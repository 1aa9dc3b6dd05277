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
