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
