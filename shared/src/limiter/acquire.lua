-- Take every permit a dispatch needs, or none, in one atomic call.
--
-- KEYS: global log, global leases, tenant log, tenant leases, then six per candidate key:
--   key log, key leases, key health, group log, group leases, group health.
-- ARGV: lease ms, window ms, busy retry ms, no-key retry ms, lease id suffix, needs key (0/1),
--   global rpm, global concurrency, tenant rpm, tenant concurrency (-1 = unlimited),
--   candidate count, then five per candidate: key id, key rpm, key concurrency, group rpm,
--   group concurrency.
-- Returns {1, lease id, key id or ''} or {0, wait ms}.
--
-- Logs are sorted sets of admissions scored by time; leases are sorted sets scored by expiry.
-- The clock is the server's: callers pass no time, so a skewed caller cannot widen a window.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local busy = tonumber(ARGV[3])
local no_key = tonumber(ARGV[4])

local function prune(log, leases)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. (now - window))
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
end

-- How long until this level could admit one more (0 = now), and how full it is.
local function check(log, leases, rpm, conc)
  local wait, load = 0, 0
  if rpm >= 0 then
    local n = redis.call('ZCARD', log)
    load = math.max(load, n / math.max(rpm, 1))
    if n >= rpm then
      -- The admission whose ageing out brings the count below the limit.
      local e = redis.call('ZRANGE', log, n - rpm, n - rpm, 'WITHSCORES')
      if e[2] then wait = tonumber(e[2]) + window + 1 - now else wait = window end
    end
  end
  if conc >= 0 then
    local n = redis.call('ZCARD', leases)
    load = math.max(load, n / math.max(conc, 1))
    if n >= conc then
      local e = redis.call('ZRANGE', leases, n - conc, n - conc, 'WITHSCORES')
      local freed = window
      if e[2] then freed = tonumber(e[2]) - now end
      wait = math.max(wait, math.max(math.min(freed, busy), 1))
    end
  end
  return math.max(wait, 0), load
end

prune(KEYS[1], KEYS[2])
prune(KEYS[3], KEYS[4])
local global_wait = check(KEYS[1], KEYS[2], tonumber(ARGV[7]), tonumber(ARGV[8]))
local tenant_wait = check(KEYS[3], KEYS[4], tonumber(ARGV[9]), tonumber(ARGV[10]))
local shared_wait = math.max(global_wait, tenant_wait)

local needs_key = ARGV[6] == '1'
local best, best_load, best_ewma, best_failures
local soonest
if needs_key then
  for i = 1, tonumber(ARGV[11]) do
    local k = 4 + (i - 1) * 6
    local a = 11 + (i - 1) * 5
    prune(KEYS[k + 1], KEYS[k + 2])
    prune(KEYS[k + 4], KEYS[k + 5])
    local h = redis.call('HMGET', KEYS[k + 3], 'cd', 'f', 'p', 'pl', 'pe', 'd', 'e')
    if h[6] ~= '1' then
      local group_cd = tonumber(redis.call('HGET', KEYS[k + 6], 'cd') or 0)
      local wait = math.max(math.max(tonumber(h[1] or 0), group_cd) - now, 0)
      if h[3] == '1' and h[4] and tonumber(h[5] or 0) > now then
        wait = math.max(wait, math.min(tonumber(h[5]) - now, busy))
      end
      local key_wait, key_load =
        check(KEYS[k + 1], KEYS[k + 2], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
      local group_wait, group_load =
        check(KEYS[k + 4], KEYS[k + 5], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]))
      wait = math.max(wait, key_wait, group_wait)
      if wait > 0 then
        if not soonest or wait < soonest then soonest = wait end
      else
        local load = math.max(key_load, group_load)
        local ewma = tonumber(h[7] or 0)
        local failures = tonumber(h[2] or 0)
        local better = not best or load < best_load
          or (load == best_load and (ewma < best_ewma
            or (ewma == best_ewma and failures < best_failures)))
        if better then
          best, best_load, best_ewma, best_failures = i, load, ewma, failures
        end
      end
    end
  end
end

local key_wait = 0
if needs_key and not best then key_wait = soonest or no_key end
local wait = math.max(shared_wait, key_wait)
if wait > 0 then return {0, wait} end

local lease = now .. '-' .. ARGV[5]
local expiry = now + lease_ms
local function take(log, leases)
  redis.call('ZADD', log, now, lease)
  redis.call('PEXPIRE', log, window + 1000)
  redis.call('ZADD', leases, expiry, lease)
  if redis.call('PTTL', leases) < lease_ms + 1000 then
    redis.call('PEXPIRE', leases, lease_ms + 1000)
  end
end
take(KEYS[1], KEYS[2])
take(KEYS[3], KEYS[4])
local key_id = ''
if best then
  local k = 4 + (best - 1) * 6
  take(KEYS[k + 1], KEYS[k + 2])
  take(KEYS[k + 4], KEYS[k + 5])
  -- The health hash exists (with its TTL) whenever the key is probing.
  if redis.call('HGET', KEYS[k + 3], 'p') == '1' then
    redis.call('HSET', KEYS[k + 3], 'pl', lease, 'pe', expiry)
  end
  key_id = ARGV[11 + (best - 1) * 5 + 1]
end
return {1, lease, key_id}
