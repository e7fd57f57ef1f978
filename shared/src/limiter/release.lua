-- Give a lease back at every level and record how the attempt went, in one atomic call.
--
-- The lease id names the levels it holds (see `acquire.lua`); the caller reads them from it
-- and passes the field names ready-made.
--
-- KEYS: counts hash, lease index, health hash, global log, tenant log, key log, group log,
--   key samples (the key ones are placeholders when the lease holds no key).
-- ARGV: lease id, outcome (success, neutral, unused, failure, throttled, invalid, quota),
--   wait ms (throttled: the upstream's hint or -1; quota: until the reset), failure threshold,
--   cooldown ms, throttle cooldown ms, outcomes kept, health ttl ms, key field ('' without a
--   key), group field ('' without a group), then the count fields the lease holds.
-- Returns {held (0/1), newly disabled (0/1)}.

local counts, index, health = KEYS[1], KEYS[2], KEYS[3]
local lease = ARGV[1]
local outcome = ARGV[2]
local health_ttl = tonumber(ARGV[8])
local samples_kept = tonumber(ARGV[7])

-- A repeated release, or one after the lease expired and was reclaimed, changes nothing: the
-- outcome counts once.
if redis.call('ZREM', index, lease) == 0 then return {0, 0} end

local fields = {unpack(ARGV, 11)}
local held = redis.call('HMGET', counts, unpack(fields))
local writes = {}
for i, field in ipairs(fields) do
  local n = (tonumber(held[i]) or 0) - 1
  if n < 0 then n = 0 end
  writes[2 * i - 1], writes[2 * i] = field, n
end
redis.call('HSET', counts, unpack(writes))

-- A permit never used hands its admissions back, so the upstream's window is not wasted.
if outcome == 'unused' then
  local short = string.match(lease, '^[^|]*')
  for i = 4, 7 do redis.call('ZREM', KEYS[i], short) end
end
local field, group_field = ARGV[9], ARGV[10]
if field == '' then return {1, 0} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The same record shape as `acquire.lua`: cooldown until, failures, probing, probe expiry,
-- disabled, failure average, probe lease.
local record = redis.call('HGET', health, field)
local cd, failures, p, pe, d, ewma, probe_lease = 0, 0, '0', 0, '0', 0, ''
if record then
  local c1, c2, c3, c4, c5, c6, c7 =
    string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
  if c1 then
    cd, failures, p, pe, d, ewma, probe_lease =
      tonumber(c1), tonumber(c2), c3, tonumber(c4), c5, tonumber(c6), c7
  end
end
local probing = p == '1'
if probe_lease == lease then probe_lease, pe = '', 0 end
local start = tonumber(string.match(lease, '^(%d+)-')) or now
local latency = math.max(now - start, 0)

-- The hash's TTL only ever grows, so no write cuts short a cooldown in force elsewhere.
local function keep(until_ms)
  local wanted = math.max(until_ms - now + 1000, health_ttl)
  if redis.call('PTTL', health) < wanted then redis.call('PEXPIRE', health, wanted) end
end

local sample
local failed = false
local newly_disabled = 0
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
  if d ~= '1' then newly_disabled = 1 end
  d = '1'
  sample = 0
elseif outcome == 'quota' then
  local until_ms = now + tonumber(ARGV[3])
  cd = math.max(cd, until_ms)
  if group_field ~= '' then
    local group_cd = tonumber(redis.call('HGET', health, group_field)) or 0
    if until_ms > group_cd then
      redis.call('HSET', health, group_field, string.format('%d', until_ms))
      keep(until_ms)
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
  -- Each outcome keeps the attempt's start, which counts it in "requests in the last minute".
  local n = redis.call('LPUSH', KEYS[8], sample .. ':' .. latency .. ':' .. start)
  -- Trimming and refreshing the TTL now and then is enough: readers take the newest only.
  if n == 1 or n > samples_kept + 16 then
    redis.call('LTRIM', KEYS[8], 0, samples_kept - 1)
    redis.call('PEXPIRE', KEYS[8], health_ttl)
  end
end
-- A healthy key staying healthy has no record: it would only say so.
local clean = failures == 0 and not probing and probe_lease == ''
  and cd <= now and d ~= '1' and ewma < 0.001
if clean then
  if record then redis.call('HDEL', health, field) end
  return {1, 0}
end
if probing then p = '1' else p = '0' end
redis.call('HSET', health, field, string.format('%d %d %s %d %s %s %s',
  cd, failures, p, pe, d, tostring(ewma), probe_lease))
keep(cd)
return {1, newly_disabled}
