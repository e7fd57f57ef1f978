-- Give a lease back at every level and record how the attempt went, in one atomic call.
--
-- KEYS: global log, global leases, tenant log, tenant leases, and when a key was used:
--   key log, key leases, key health, key samples, and when its group is known:
--   group log, group leases, group health.
-- ARGV: lease id, outcome (success, neutral, unused, failure, throttled, invalid, quota),
--   wait ms (throttled: the upstream's hint or -1; quota: until the reset), failure threshold,
--   cooldown ms, throttle cooldown ms, samples kept, health ttl ms, has key (0/1),
--   has group (0/1).
-- Returns {held (0/1), newly disabled (0/1)}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = ARGV[1]
local outcome = ARGV[2]
local health_ttl = tonumber(ARGV[8])
-- A permit never used hands its admission back, so the upstream's window is not wasted.
local refund = outcome == 'unused'

local function give(log, leases)
  if refund then redis.call('ZREM', log, lease) end
  return redis.call('ZREM', leases, lease)
end

local function keep_until(key, until_ms)
  local ttl = math.max(until_ms - now + 1000, health_ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end

give(KEYS[1], KEYS[2])
local tenant_held = give(KEYS[3], KEYS[4])
if ARGV[9] ~= '1' then return {tenant_held, 0} end
local held = give(KEYS[5], KEYS[6])
if ARGV[10] == '1' then give(KEYS[9], KEYS[10]) end
-- A repeated release must not count the same outcome twice.
if held == 0 then return {0, 0} end

local health = KEYS[7]
local h = redis.call('HMGET', health, 'cd', 'f', 'p', 'pl', 'd', 'e')
local cd = tonumber(h[1] or 0)
local failures = tonumber(h[2] or 0)
local probing = h[3] == '1'
local ewma = tonumber(h[6] or 0)
if h[4] == lease then redis.call('HDEL', health, 'pl', 'pe') end
local start = tonumber(string.match(lease, '^(%d+)-')) or now
local latency = math.max(now - start, 0)

local sample
local failed = false
local disabled = 0
if outcome == 'success' then
  failures = 0
  probing = false
  sample = 1
elseif outcome == 'neutral' then
  sample = 1
elseif outcome == 'failure' then
  failed = true
elseif outcome == 'throttled' then
  local wait = tonumber(ARGV[3])
  if wait < 0 then wait = tonumber(ARGV[6]) end
  cd = math.max(cd, now + wait)
  failed = true
elseif outcome == 'invalid' then
  if h[5] ~= '1' then disabled = 1 end
  redis.call('HSET', health, 'd', '1')
  sample = 0
elseif outcome == 'quota' then
  local until_ms = now + tonumber(ARGV[3])
  cd = math.max(cd, until_ms)
  if ARGV[10] == '1' then
    local group_cd = tonumber(redis.call('HGET', KEYS[11], 'cd') or 0)
    if until_ms > group_cd then redis.call('HSET', KEYS[11], 'cd', until_ms) end
    keep_until(KEYS[11], until_ms)
  end
end
if failed then
  failures = failures + 1
  sample = 0
  if probing or failures >= tonumber(ARGV[4]) then
    cd = math.max(cd, now + tonumber(ARGV[5]))
    probing = true
  end
end
if sample then
  ewma = ewma * 0.9 + (1 - sample) * 0.1
  redis.call('LPUSH', KEYS[8], sample .. ':' .. latency)
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[7]) - 1)
  redis.call('PEXPIRE', KEYS[8], health_ttl)
end
local p = '0'
if probing then p = '1' end
redis.call('HSET', health, 'cd', string.format('%d', cd), 'f', failures, 'p', p,
  'e', tostring(ewma))
keep_until(health, cd)
return {1, disabled}
