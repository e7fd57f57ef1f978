-- Give leases back at every level and record how each attempt went, in one atomic call. Like
-- `acquire.lua`, one call may carry the releases of several dispatches; each counts as if it
-- had come alone, in order.
--
-- The lease id names the levels it holds (see `acquire.lua`); the caller reads them from it
-- and passes the field names ready-made.
--
-- KEYS: counts hash, lease index, health hash, global log, then four per release: tenant log,
--   key log, group log, key samples (the key ones are placeholders when the lease holds no
--   key).
-- ARGV: failure threshold, cooldown ms, throttle cooldown ms, outcomes kept, health ttl ms,
--   release count, then per release: lease id, outcome (success, neutral, unused, failure,
--   throttled, invalid, quota), wait ms (throttled: the upstream's hint or -1; quota: until
--   the reset), key field ('' without a key), group field ('' without a group), the number of
--   count fields the lease holds, then those fields.
-- Returns two per release: held (0/1), newly disabled (0/1).

local counts, index, health = KEYS[1], KEYS[2], KEYS[3]
local threshold = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local throttle_cooldown = tonumber(ARGV[3])
local samples_kept = tonumber(ARGV[4])
local health_ttl = tonumber(ARGV[5])
local n = tonumber(ARGV[6])

local releases, leases = {}, {}
local a = 6
for j = 1, n do
  local nf = tonumber(ARGV[a + 6])
  local r = {lease = ARGV[a + 1], outcome = ARGV[a + 2], wait = tonumber(ARGV[a + 3]),
    kf = ARGV[a + 4], qf = ARGV[a + 5], first = a + 7, last = a + 6 + nf,
    tlog = KEYS[4 * j + 1], klog = KEYS[4 * j + 2], qlog = KEYS[4 * j + 3],
    samples = KEYS[4 * j + 4]}
  releases[j] = r
  leases[j] = r.lease
  a = a + 6 + nf
end

-- A repeated release, or one after the lease expired and was reclaimed, changes nothing: the
-- outcome counts once.
local scores = redis.call('ZMSCORE', index, unpack(leases))
local gone, removed = {}, {}
for j, r in ipairs(releases) do
  if scores[j] and not gone[r.lease] then
    r.held = true
    gone[r.lease] = true
    removed[#removed + 1] = r.lease
  end
end
local out = {}
for j = 1, n do out[2 * j - 1], out[2 * j] = 0, 0 end
if #removed == 0 then return out end
redis.call('ZREM', index, unpack(removed))

local fields, seen = {}, {}
for _, r in ipairs(releases) do
  if r.held then
    for i = r.first, r.last do
      local f = ARGV[i]
      if not seen[f] then
        seen[f] = true
        fields[#fields + 1] = f
      end
    end
  end
end
local values = redis.call('HMGET', counts, unpack(fields))
local left = {}
for i, f in ipairs(fields) do left[f] = tonumber(values[i]) or 0 end
for _, r in ipairs(releases) do
  if r.held then
    for i = r.first, r.last do
      local f = ARGV[i]
      if left[f] > 0 then left[f] = left[f] - 1 end
    end
  end
end
local writes, zeros = {}, {}
for _, f in ipairs(fields) do
  if left[f] > 0 then
    writes[#writes + 1] = f
    writes[#writes + 1] = left[f]
  else
    zeros[#zeros + 1] = f
  end
end
if #writes > 0 then redis.call('HSET', counts, unpack(writes)) end
if #zeros > 0 then redis.call('HDEL', counts, unpack(zeros)) end

-- Health: the records of the keys these leases held, read once and written once.
local hfields, records = {}, {}
for _, r in ipairs(releases) do
  if r.held and r.kf ~= '' and records[r.kf] == nil then
    records[r.kf] = false
    hfields[#hfields + 1] = r.kf
  end
end
for j, r in ipairs(releases) do
  if r.held then out[2 * j - 1] = 1 end
  -- A permit never used hands its admissions back, so the upstream's window is not wasted.
  if r.held and r.outcome == 'unused' then
    local short = string.match(r.lease, '^[^|]*')
    for _, z in ipairs({KEYS[4], r.tlog, r.klog, r.qlog}) do redis.call('ZREM', z, short) end
  end
end
if #hfields == 0 then return out end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.call('HMGET', health, unpack(hfields))
-- The same record shape as `acquire.lua`: cooldown until, failures, probing, probe expiry,
-- disabled, failure average, probe lease.
for i, f in ipairs(hfields) do
  local h = {cd = 0, failures = 0, p = '0', pe = 0, d = '0', ewma = 0, pl = '', had = false}
  local record = stored[i]
  if record then
    h.had = true
    local c1, c2, c3, c4, c5, c6, c7 =
      string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
    if c1 then
      h.cd, h.failures, h.p, h.pe, h.d, h.ewma, h.pl =
        tonumber(c1), tonumber(c2), c3, tonumber(c4), c5, tonumber(c6), c7
    end
  end
  records[f] = h
end

-- The hash's TTL only ever grows, so no write cuts short a cooldown in force elsewhere.
local keep_until = 0
local samples = {}
for j, r in ipairs(releases) do
  if r.held and r.kf ~= '' then
    local h = records[r.kf]
    if h.pl == r.lease then h.pl, h.pe = '', 0 end
    local start = tonumber(string.match(r.lease, '^(%d+)-')) or now
    local latency = math.max(now - start, 0)
    local outcome = r.outcome
    local sample
    local failed = false
    if outcome == 'success' then
      h.failures = 0
      h.p = '0'
      sample = 1
    elseif outcome == 'neutral' then
      sample = 1
    elseif outcome == 'failure' then
      failed = true
    elseif outcome == 'throttled' then
      local wait = r.wait
      if wait < 0 then wait = throttle_cooldown end
      h.cd = math.max(h.cd, now + wait)
      failed = true
    elseif outcome == 'invalid' then
      if h.d ~= '1' then out[2 * j] = 1 end
      h.d = '1'
      sample = 0
    elseif outcome == 'quota' then
      local until_ms = now + r.wait
      h.cd = math.max(h.cd, until_ms)
      if r.qf ~= '' then
        local group_cd = tonumber(redis.call('HGET', health, r.qf)) or 0
        if until_ms > group_cd then
          redis.call('HSET', health, r.qf, string.format('%d', until_ms))
          keep_until = math.max(keep_until, until_ms)
        end
      end
    end
    if failed then
      h.failures = h.failures + 1
      sample = 0
      if h.p == '1' or h.failures >= threshold then
        h.cd = math.max(h.cd, now + cooldown)
        h.p = '1'
      end
    end
    if sample then
      h.ewma = h.ewma * 0.9 + (1 - sample) * 0.1
      -- Each outcome keeps the attempt's start, which counts it in "requests in the last
      -- minute".
      local list = samples[r.samples]
      if not list then
        list = {}
        samples[r.samples] = list
      end
      list[#list + 1] = sample .. ':' .. latency .. ':' .. start
    end
    h.changed = true
  end
end

for key, list in pairs(samples) do
  local len = redis.call('LPUSH', key, unpack(list))
  -- Trimming and refreshing the TTL now and then is enough: readers take the newest only.
  if len == #list or len > samples_kept + 16 then
    redis.call('LTRIM', key, 0, samples_kept - 1)
    redis.call('PEXPIRE', key, health_ttl)
  end
end

local writes, cleared = {}, {}
for _, f in ipairs(hfields) do
  local h = records[f]
  -- A healthy key staying healthy has no record: it would only say so.
  local clean = h.failures == 0 and h.p ~= '1' and h.pl == '' and h.cd <= now
    and h.d ~= '1' and h.ewma < 0.001
  if clean then
    if h.had then cleared[#cleared + 1] = f end
  else
    writes[#writes + 1] = f
    writes[#writes + 1] = string.format('%d %d %s %d %s %s %s',
      h.cd, h.failures, h.p, h.pe, h.d, tostring(h.ewma), h.pl)
    keep_until = math.max(keep_until, h.cd)
  end
end
if #cleared > 0 then redis.call('HDEL', health, unpack(cleared)) end
if #writes > 0 or keep_until > 0 then
  if #writes > 0 then redis.call('HSET', health, unpack(writes)) end
  local wanted = math.max(keep_until - now + 1000, health_ttl)
  if redis.call('PTTL', health) < wanted then redis.call('PEXPIRE', health, wanted) end
end
return out
