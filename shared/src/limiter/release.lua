-- Give a lease back at every level and record how the attempt went, in one atomic call.
--
-- KEYS: global set, tenant set, and when a key was used: key set, key health, key samples,
--   and when its group is known: group set, group health.
-- ARGV: lease id, outcome (success, neutral, unused, failure, throttled, invalid, quota),
--   wait ms (throttled: the upstream's hint or -1; quota: until the reset), failure threshold,
--   cooldown ms, throttle cooldown ms, samples kept, health ttl ms, has key (0/1),
--   has group (0/1), global limited (0/1).
-- Returns {held (0/1), newly disabled (0/1)}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = ARGV[1]
local outcome = ARGV[2]
local health_ttl = tonumber(ARGV[8])
local samples_kept = tonumber(ARGV[7])

-- A permit never used hands its admission back, so the upstream's window is not wasted.
local function give(z)
  if outcome == 'unused' then
    return redis.call('ZREM', z, 'l' .. lease, 'a' .. lease)
  end
  return redis.call('ZREM', z, 'l' .. lease)
end

if ARGV[11] == '1' then give(KEYS[1]) end
local tenant_held = give(KEYS[2])
if ARGV[9] ~= '1' then return {math.min(tenant_held, 1), 0} end
local held = give(KEYS[3])
if ARGV[10] == '1' then give(KEYS[6]) end
-- A repeated release must not count the same outcome twice.
if held == 0 then return {0, 0} end

local health = KEYS[4]
local h = redis.call('HMGET', health, 'cd', 'f', 'p', 'pl', 'd', 'e')
local cd = tonumber(h[1] or 0)
local failures = tonumber(h[2] or 0)
local probing = h[3] == '1'
local probe_lease = h[4] or ''
local ewma = tonumber(h[6] or 0)
if probe_lease == lease then probe_lease = '' end
local start = tonumber(string.match(lease, '^(%d+)-')) or now
local latency = math.max(now - start, 0)

local sample
local failed = false
local disabled = 0
local newly_disabled = 0
if h[5] == '1' then disabled = 1 end
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
  if disabled == 0 then newly_disabled = 1 end
  disabled = 1
  sample = 0
elseif outcome == 'quota' then
  local until_ms = now + tonumber(ARGV[3])
  cd = math.max(cd, until_ms)
  if ARGV[10] == '1' then
    local group_cd = tonumber(redis.call('HGET', KEYS[7], 'cd') or 0)
    if until_ms > group_cd then
      redis.call('HSET', KEYS[7], 'cd', string.format('%d', until_ms))
      redis.call('PEXPIRE', KEYS[7], math.max(until_ms - now + 1000, health_ttl))
    end
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
  local n = redis.call('LPUSH', KEYS[5], sample .. ':' .. latency)
  -- Trimming and refreshing the TTL now and then is enough: readers take the newest only.
  if n == 1 or n > samples_kept + 16 then
    redis.call('LTRIM', KEYS[5], 0, samples_kept - 1)
    redis.call('PEXPIRE', KEYS[5], health_ttl)
  end
end
-- A healthy key staying healthy needs no write: its hash would only say so again.
local clean = failures == 0 and not probing and probe_lease == ''
  and cd <= now and disabled == 0 and ewma < 0.001
if clean then return {1, 0} end
local p = '0'
if probing then p = '1' end
redis.call('HSET', health, 'cd', string.format('%d', cd), 'f', failures, 'p', p,
  'pl', probe_lease, 'd', disabled, 'e', tostring(ewma))
-- The cooldown in force is the longest ever set, so the TTL never cuts one short.
redis.call('PEXPIRE', health, math.max(cd - now + 1000, health_ttl))
return {1, newly_disabled}
