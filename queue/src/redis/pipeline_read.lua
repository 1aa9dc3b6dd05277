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
