local k = P .. ':limits:' .. ARGV[2]
local jpm = tonumber(ARGV[4]) or 0
if redis.call('EXISTS', k) == 1 then
  local tokens = tonumber(redis.call('HGET', k, 'tokens')) or 0
  if jpm < tokens then tokens = jpm end
  redis.call('HSET', k, 'tokens', tokens)
else
  redis.call('HSET', k, 'tokens', jpm, 'refilled_at_ms', NOW)
end
if ARGV[3] == '' then redis.call('HDEL', k, 'max_running') else redis.call('HSET', k, 'max_running', ARGV[3]) end
if ARGV[4] == '' then redis.call('HDEL', k, 'jobs_per_minute') else redis.call('HSET', k, 'jobs_per_minute', ARGV[4]) end
return 1
