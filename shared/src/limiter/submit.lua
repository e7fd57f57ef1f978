-- Counts one submission against a tenant's requests per window, on the server's clock.
-- KEYS[1]: the tenant's submission log, a sorted set of admission times (ms)
-- ARGV[1]: window (ms)   ARGV[2]: limit   ARGV[3]: a unique member for this submission
-- Returns 0 when admitted, else the milliseconds until the oldest counted submission ages out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
