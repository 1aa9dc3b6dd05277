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
