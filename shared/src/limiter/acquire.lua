-- Take every permit a dispatch needs, or none, in one atomic call.
--
-- Each level (global, tenant, quota group, key) is one sorted set holding its admissions
-- ('a' .. lease id, scored by admission time) and its live leases ('l' .. lease id, scored by
-- expiry plus OFFSET), so one ZADD takes both and one range count reads either.
--
-- KEYS: global set, tenant set, then four per candidate key: key set, key health,
--   group set, group health.
-- ARGV: lease ms, window ms, busy retry ms, no-key retry ms, lease id suffix (hex), needs key
--   (0/1), global rpm, global concurrency, tenant rpm, tenant concurrency (-1 = unlimited),
--   set ttl ms, candidate count, then five per candidate: key id, key rpm, key concurrency,
--   group rpm, group concurrency.
-- Returns {1, lease id, key id or ''} or {0, wait ms}.
--
-- The clock is the server's: callers pass no time, so a skewed caller cannot widen a window.

local OFFSET = 10000000000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local busy = tonumber(ARGV[3])
local no_key = tonumber(ARGV[4])
local ttl = tonumber(ARGV[11])

-- How long until this level could admit one more (0 = now), and how full it is (`spread`: also
-- when it has no concurrency limit). Counting by score range needs no pruning first.
local function check(z, rpm, conc, spread)
  local wait, load = 0, 0
  if rpm >= 0 then
    local low, high = now - window, '(' .. OFFSET
    local n = redis.call('ZCOUNT', z, low, high)
    load = math.max(load, n / math.max(rpm, 1))
    if n >= rpm then
      -- The admission whose ageing out brings the count below the limit.
      local e = redis.call('ZRANGEBYSCORE', z, low, high, 'WITHSCORES', 'LIMIT', n - rpm, 1)
      if e[2] then wait = tonumber(e[2]) + window + 1 - now else wait = window end
    end
  end
  if conc >= 0 then
    local low = '(' .. (OFFSET + now)
    local n = redis.call('ZCOUNT', z, low, '+inf')
    load = math.max(load, n / math.max(conc, 1))
    if n >= conc then
      local e = redis.call('ZRANGEBYSCORE', z, low, '+inf', 'WITHSCORES', 'LIMIT', n - conc, 1)
      local freed = window
      if e[2] then freed = tonumber(e[2]) - OFFSET - now end
      wait = math.max(wait, math.max(math.min(freed, busy), 1))
    end
  elseif spread then
    -- Without a limit, the lease count alone (scaled below any fraction) spreads the work.
    local n = redis.call('ZCOUNT', z, '(' .. (OFFSET + now), '+inf')
    load = math.max(load, n * 0.000001)
  end
  return math.max(wait, 0), load
end

local global_rpm, global_conc = tonumber(ARGV[7]), tonumber(ARGV[8])
local global_limited = global_rpm >= 0 or global_conc >= 0
local global_wait = 0
if global_limited then global_wait = check(KEYS[1], global_rpm, global_conc) end
local tenant_wait = check(KEYS[2], tonumber(ARGV[9]), tonumber(ARGV[10]))
local shared_wait = math.max(global_wait, tenant_wait)

local needs_key = ARGV[6] == '1'
local best, best_load, best_key_load, best_ewma, best_failures, best_probing
local soonest
-- Keys of one project share its group: check each group once per call.
local groups = {}
-- When the global or tenant level is full, its wait is the answer, so the candidates need no
-- look.
if needs_key and shared_wait == 0 then
  for i = 1, tonumber(ARGV[12]) do
    local k = 2 + (i - 1) * 4
    local a = 12 + (i - 1) * 5
    local h = redis.call('HMGET', KEYS[k + 2], 'cd', 'f', 'p', 'pl', 'pe', 'd', 'e')
    if h[6] ~= '1' then
      local group = groups[KEYS[k + 3]]
      if not group then
        local gw, gl = check(KEYS[k + 3], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), true)
        local gcd = tonumber(redis.call('HGET', KEYS[k + 4], 'cd') or 0)
        group = {math.max(gw, gcd - now), gl}
        groups[KEYS[k + 3]] = group
      end
      local group_wait, group_load = group[1], group[2]
      local wait = math.max(tonumber(h[1] or 0) - now, 0)
      local probing = h[3] == '1'
      if probing and h[4] and h[4] ~= '' and tonumber(h[5] or 0) > now then
        -- After a cooldown one probe at a time decides whether the key is back.
        wait = math.max(wait, math.min(tonumber(h[5]) - now, busy))
      end
      local key_wait, key_load = 0, 0
      if wait == 0 and group_wait == 0 then
        key_wait, key_load =
          check(KEYS[k + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), true)
      end
      wait = math.max(wait, key_wait, group_wait)
      if wait > 0 then
        if not soonest or wait < soonest then soonest = wait end
      else
        local load = math.max(key_load, group_load)
        local ewma = tonumber(h[7] or 0)
        local failures = tonumber(h[2] or 0)
        -- Least loaded (the busier of key and group, then the key alone), then healthiest.
        local better = not best or load < best_load
          or (load == best_load and (key_load < best_key_load
            or (key_load == best_key_load and (ewma < best_ewma
              or (ewma == best_ewma and failures < best_failures)))))
        if better then
          best, best_load, best_key_load, best_ewma, best_failures, best_probing =
            i, load, key_load, ewma, failures, probing
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
-- Stale members never change a count (counts are by range); dropping them on about one call
-- in sixteen keeps the sets small without paying for it on every call.
local prune = string.sub(ARGV[5], 1, 1) == '0'
-- Admissions are logged where a rate is limited, and always per key (for its health figures).
local function take(z, logged)
  if prune then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. (now - window))
    redis.call('ZREMRANGEBYSCORE', z, OFFSET, OFFSET + now)
  end
  if logged then
    redis.call('ZADD', z, now, 'a' .. lease, OFFSET + expiry, 'l' .. lease)
  else
    redis.call('ZADD', z, OFFSET + expiry, 'l' .. lease)
  end
  redis.call('PEXPIRE', z, ttl)
end
if global_limited then take(KEYS[1], global_rpm >= 0) end
take(KEYS[2], tonumber(ARGV[9]) >= 0)
local key_id = ''
if best then
  local k = 2 + (best - 1) * 4
  local a = 12 + (best - 1) * 5
  take(KEYS[k + 1], true)
  take(KEYS[k + 3], tonumber(ARGV[a + 4]) >= 0)
  -- The health hash exists (with its TTL) whenever the key is probing.
  if best_probing then
    redis.call('HSET', KEYS[k + 2], 'pl', lease, 'pe', expiry)
  end
  key_id = ARGV[a + 1]
end
return {1, lease, key_id}
