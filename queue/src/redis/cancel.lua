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
