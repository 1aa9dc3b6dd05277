local worker = ARGV[2]
local lease_at = NOW + tonumber(ARGV[3])
local out, z = {}, {}
for i = 4, #ARGV - 1, 2 do
  local id = ARGV[i]
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'state', 'claims', 'worker', 'cancel_requested')
  local r = 0
  if f[1] == 'running' and tonumber(f[2]) == tonumber(ARGV[i + 1]) and f[3] == worker then
    redis.call('HSET', k, 'lease_expires_at_ms', lease_at)
    z[#z + 1] = lease_at
    z[#z + 1] = id
    r = 1
    if f[4] == '1' then r = 2 end
  end
  out[#out + 1] = r
end
batch('ZADD', P .. ':running', z)
return out
