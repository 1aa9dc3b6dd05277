local depth = redis.call('HGETALL', DEPTH)
local oldest = {}
for _, kind in ipairs(redis.call('SMEMBERS', P .. ':kinds')) do
  local r = redis.call('ZRANGE', P .. ':avail_at:' .. kind, 0, 0, 'WITHSCORES')
  if #r > 0 then
    oldest[#oldest + 1] = kind
    oldest[#oldest + 1] = r[2]
  end
end
return {NOW, depth, oldest}
