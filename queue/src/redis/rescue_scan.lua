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
