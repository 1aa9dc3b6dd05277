local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local rotation = tonumber(ARGV[5])
local max_projects = tonumber(ARGV[6])
local kinds = {}
for i = 7, #ARGV do kinds[#kinds + 1] = ARGV[i] end

-- Promote due scheduled jobs (bounded per call).
local due = redis.call('ZRANGEBYSCORE', P .. ':scheduled', '-inf', NOW, 'LIMIT', 0, 1000)
if #due > 0 then
  local zadd, sadd, seen = {}, {}, {}
  for _, id in ipairs(due) do
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'state', 'kind', 'project', 'priority', 'run_at_ms')
    if f[1] == 'scheduled' and f[2] and f[3] then
      redis.call('HSET', k, 'state', 'available')
      push(zadd, akey(f[2], f[3]), (tonumber(f[4]) or 0) * SHIFT + tonumber(id), id)
      push(zadd, P .. ':avail_at:' .. f[2], tonumber(f[5]) or NOW, id)
      local sk = P .. ':projects:' .. f[2]
      seen[sk] = seen[sk] or {}
      if not seen[sk][f[3]] then seen[sk][f[3]] = true; push(sadd, sk, f[3]) end
      dchange(f[2], f[3], 'scheduled', -1)
      dchange(f[2], f[3], 'available', 1)
    end
  end
  batch('ZREM', P .. ':scheduled', due)
  flush(zadd, 'ZADD')
  flush(sadd, 'SADD')
  dflush()
end

-- Room of a project under its limits (-1: unlimited), read once per claim.
local room_of, tokens_of, refilled_of = {}, {}, {}
local function room(p)
  if room_of[p] then return room_of[p] end
  local l = redis.call('HMGET', P .. ':limits:' .. p, 'max_running', 'jobs_per_minute', 'tokens', 'refilled_at_ms')
  local r = -1
  local maxr, jpm = tonumber(l[1]), tonumber(l[2])
  if maxr then
    local running = tonumber(redis.call('HGET', P .. ':nrunning', p)) or 0
    r = maxr - running
    if r < 0 then r = 0 end
  end
  if jpm then
    local at = tonumber(l[4]) or NOW
    local elapsed = NOW - at
    if elapsed < 0 then elapsed = 0 end
    local tokens = (tonumber(l[3]) or 0) + (elapsed / 1000) * jpm / 60
    if tokens > jpm then tokens = jpm end
    tokens_of[p] = tokens
    -- Never move the bucket's clock backwards (a refill stamped by a server whose clock ran ahead).
    refilled_of[p] = math.max(NOW, at)
    local t = math.floor(math.max(tokens, 0))
    if r < 0 or t < r then r = t end
  end
  room_of[p] = r
  return r
end

-- Candidate projects: at most max_projects with available work of the worker's kinds and room to
-- start some. Each kind gets a share ceil(max_projects / #kinds) of them, the rounding favouring
-- kinds from `rotation` on; a kind with fewer projects leaves its unused share to the others. A
-- kind's share is filled from a random sample of twice its size, keeping only projects with room,
-- so projects at their limits take no one's place; a shortfall passes to the next kind, then to
-- fresh samples of kinds not wholly sampled. Everything here is O(max_projects + #kinds^2).
local nk = #kinds
local order, card, alloc, whole = {}, {}, {}, {}
for x = 0, nk - 1 do
  local kind = kinds[((rotation + x) % nk) + 1]
  order[#order + 1] = kind
  card[kind] = redis.call('SCARD', P .. ':projects:' .. kind)
  alloc[kind] = 0
end
local left = max_projects
while left > 0 do
  local hungry = {}
  for _, kind in ipairs(order) do
    if alloc[kind] < card[kind] then hungry[#hungry + 1] = kind end
  end
  if #hungry == 0 then break end
  local share = math.ceil(left / #hungry)
  for _, kind in ipairs(hungry) do
    local g = math.min(share, card[kind] - alloc[kind], left)
    alloc[kind] = alloc[kind] + g
    left = left - g
  end
end
local seenp, open = {}, {}
-- Keeps up to `want` new projects with room from a sample of twice that; returns how many.
local function sample(kind, want)
  if want <= 0 or #open >= max_projects then return 0 end
  local members = redis.call('SRANDMEMBER', P .. ':projects:' .. kind, 2 * want)
  if #members >= card[kind] then whole[kind] = true end
  local kept = 0
  for _, p in ipairs(members) do
    if kept >= want or #open >= max_projects then break end
    if not seenp[p] then
      seenp[p] = true
      local r = room(p)
      if r ~= 0 then
        open[#open + 1] = {p, r}
        kept = kept + 1
      end
    end
  end
  return kept
end
local carry = 0
for _, kind in ipairs(order) do
  if card[kind] > 0 then
    local want = alloc[kind] + carry
    carry = want - sample(kind, want)
  end
end
if #open < max_projects then
  local rest = {}
  for _, kind in ipairs(order) do
    if card[kind] > 0 and not whole[kind] then rest[#rest + 1] = kind end
  end
  for x, kind in ipairs(rest) do
    sample(kind, math.ceil((max_projects - #open) / (#rest - x + 1)))
  end
end
if #open == 0 or limit == 0 then return {} end
table.sort(open, function(a, b) return a[1] < b[1] end)

-- Water-filling split of the claim, as backend::fair_quotas.
local start = rotation % #open
local n = #open
if n > limit then n = limit end
local cand, quotas = {}, {}
for j = 1, n do
  cand[j] = open[((j - 1 + start) % #open) + 1]
  quotas[j] = 0
end
local budget = limit
while true do
  local hungry = {}
  for j = 1, n do
    if cand[j][2] < 0 or quotas[j] < cand[j][2] then hungry[#hungry + 1] = j end
  end
  if #hungry == 0 or budget == 0 then break end
  local share = math.floor(budget / #hungry)
  if share < 1 then share = 1 end
  for _, j in ipairs(hungry) do
    if budget == 0 then break end
    local grant = share
    if cand[j][2] >= 0 and cand[j][2] - quotas[j] < grant then grant = cand[j][2] - quotas[j] end
    if budget < grant then grant = budget end
    quotas[j] = quotas[j] + grant
    budget = budget - grant
  end
end

-- Pop each project's quota in priority order across the worker's kinds.
local out, zrun, zrem_at, nrun, used = {}, {}, {}, {}, {}
local lease_at = NOW + lease_ms
for j = 1, n do
  local q = quotas[j]
  if q > 0 then
    local p = cand[j][1]
    local picked = {}
    if #kinds == 1 then
      local k = akey(kinds[1], p)
      local popped = redis.call('ZPOPMIN', k, q)
      for x = 1, #popped, 2 do picked[#picked + 1] = {popped[x], kinds[1]} end
      if #popped < 2 * q or redis.call('ZCARD', k) == 0 then redis.call('SREM', P .. ':projects:' .. kinds[1], p) end
    else
      local heads = {}
      for _, kind in ipairs(kinds) do
        local r = redis.call('ZRANGE', akey(kind, p), 0, q - 1, 'WITHSCORES')
        if #r == 0 then redis.call('SREM', P .. ':projects:' .. kind, p) end
        for x = 1, #r, 2 do heads[#heads + 1] = {tonumber(r[x + 1]), kind} end
      end
      table.sort(heads, function(a, b) return a[1] < b[1] end)
      local take = {}
      for x = 1, math.min(q, #heads) do take[heads[x][2]] = (take[heads[x][2]] or 0) + 1 end
      for _, kind in ipairs(kinds) do
        local c = take[kind]
        if c then
          local k = akey(kind, p)
          local popped = redis.call('ZPOPMIN', k, c)
          for x = 1, #popped, 2 do picked[#picked + 1] = {popped[x], kind} end
          if redis.call('ZCARD', k) == 0 then redis.call('SREM', P .. ':projects:' .. kind, p) end
        end
      end
    end
    for _, pk in ipairs(picked) do
      local id, kind = pk[1], pk[2]
      local k = jkey(id)
      local f = redis.call('HMGET', k, 'state', 'payload', 'attempt', 'policy', 'created_at_ms', 'run_at_ms',
        'pipeline', 'step', 'claims')
      push(zrem_at, P .. ':avail_at:' .. kind, id)
      if f[1] == 'available' then
        local attempt = (tonumber(f[3]) or 0) + 1
        local claims = (tonumber(f[9]) or 0) + 1
        redis.call('HSET', k, 'state', 'running', 'attempt', attempt, 'claims', claims, 'worker', worker,
          'attempted_at_ms', NOW, 'lease_expires_at_ms', lease_at)
        zrun[#zrun + 1] = lease_at
        zrun[#zrun + 1] = id
        nrun[p] = (nrun[p] or 0) + 1
        used[p] = (used[p] or 0) + 1
        dchange(kind, p, 'available', -1)
        dchange(kind, p, 'running', 1)
        out[#out + 1] = {tonumber(id), kind, p, f[2], attempt, claims, f[4], f[5], f[6], f[7], f[8]}
      end
    end
  end
end
batch('ZADD', P .. ':running', zrun)
flush(zrem_at, 'ZREM')
for p, c in pairs(nrun) do redis.call('HINCRBY', P .. ':nrunning', p, c) end
for p, tokens in pairs(tokens_of) do
  redis.call('HSET', P .. ':limits:' .. p, 'tokens', tokens - (used[p] or 0), 'refilled_at_ms', refilled_of[p])
end
dflush()
return out
