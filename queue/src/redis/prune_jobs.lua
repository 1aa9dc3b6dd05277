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
