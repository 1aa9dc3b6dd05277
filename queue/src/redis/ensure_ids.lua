-- Raises the id sequences to at least the floors, never lowers them.
local raised = {}
local function raise(key, floor)
  local current = tonumber(redis.call('GET', key) or '0') or 0
  if current < floor then
    redis.call('SET', key, floor)
    return floor
  end
  return current
end
raised[1] = raise(P .. ':pseq', tonumber(ARGV[2]) or 0)
raised[2] = raise(P .. ':seq', tonumber(ARGV[3]) or 0)
return raised
