-- Take every permit a dispatch needs, or none, in one atomic call.
--
-- Concurrency is counted, not scanned: the counts hash holds the live lease count of every
-- level, and the lease index holds each lease once, scored by its expiry, with the levels it
-- holds in its name. Requests per minute are exact sliding logs, kept only for levels that
-- have such a limit. Key health is one hash for the pool, with a record only for keys that are
-- not simply healthy. Field names come ready-made from the caller: building strings is the
-- dearest thing a script does.
--
-- KEYS: counts hash, lease index, health hash, global log, tenant log, then two per
--   candidate: key log, group log.
-- ARGV: lease ms, window ms, busy retry ms, no-key retry ms, lease id suffix (hex), needs key
--   (0/1), global rpm, global concurrency, tenant rpm, tenant concurrency (-1 = unlimited),
--   state ttl ms, tenant field ('t:' .. tenant), tenant id, candidate count, then six per
--   candidate: key field ('k:' .. key), group field ('q:' .. group), key rpm, key
--   concurrency, group rpm, group concurrency.
-- Returns {1, lease id, key id or ''} or {0, wait ms}.
--
-- The clock is the server's: callers pass no time, so a skewed caller cannot widen a window.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts, index, health = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[2])
local busy = tonumber(ARGV[3])
local global_rpm, global_conc = tonumber(ARGV[7]), tonumber(ARGV[8])
local tenant_rpm, tenant_conc = tonumber(ARGV[9]), tonumber(ARGV[10])
local candidates = 0
if ARGV[6] == '1' then candidates = tonumber(ARGV[14]) end
local needs_key = ARGV[6] == '1'
local prune = string.byte(ARGV[5], 1) == 48 -- '0': about one call in sixteen

-- Leases that expired without a release: give their counts back. Counts that still hold them
-- only ever overstate a level, so this runs when a level looks full (before a denial is
-- answered) and on about one call in sixteen, not on every call.
local function reclaim()
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 256)
  if #expired == 0 then return 0 end
  local back = {}
  for _, m in ipairs(expired) do
    local g, k, q, ten = string.match(m, '^[^|]*|([^|]*)|([^|]*)|([^|]*)|(.*)$')
    if ten then
      if g == '1' then back['g'] = (back['g'] or 0) + 1 end
      back['t:' .. ten] = (back['t:' .. ten] or 0) + 1
      if k ~= '' then back['k:' .. k] = (back['k:' .. k] or 0) + 1 end
      if q ~= '' then back['q:' .. q] = (back['q:' .. q] or 0) + 1 end
    end
  end
  for field, n in pairs(back) do
    if redis.call('HINCRBY', counts, field, -n) <= 0 then redis.call('HDEL', counts, field) end
  end
  redis.call('ZREM', index, unpack(expired))
  return #expired
end
local reclaimed = prune
if prune then reclaim() end

-- Every count and every health record this call may need, in two reads: per candidate
-- (from the third field on) its key's and its group's.
local fields = {'g', ARGV[12]}
for i = 1, candidates do
  local a = 14 + (i - 1) * 6
  fields[2 * i + 1] = ARGV[a + 1]
  fields[2 * i + 2] = ARGV[a + 2]
end
local held
local function read_counts() held = redis.call('HMGET', counts, unpack(fields)) end
read_counts()
local function count(i) return tonumber(held[i]) or 0 end
local records = {}
if candidates > 0 then
  records = redis.call('HMGET', health, unpack(fields, 3))
end

-- The earliest expiry of any lease: no level's first lease ends sooner, so waking then is
-- never too late. Read at most once, and only when some level is full.
local first_expiry
local function concurrency_wait()
  if not first_expiry then
    local e = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
    first_expiry = tonumber(e[2] or (now + busy))
  end
  return math.max(math.min(first_expiry - now, busy), 1)
end

-- How long until a level could admit one more (0 = now), and how full it is (`spread`: also
-- when it has no concurrency limit).
local function check(log, rpm, conc, n, spread)
  local wait, load = 0, 0
  if rpm >= 0 then
    local low = now - window
    local a = redis.call('ZCOUNT', log, low, '+inf')
    load = a / math.max(rpm, 1)
    if a >= rpm then
      -- The admission whose ageing out brings the count below the limit.
      local e = redis.call('ZRANGEBYSCORE', log, low, '+inf', 'WITHSCORES', 'LIMIT', a - rpm, 1)
      if e[2] then wait = tonumber(e[2]) + window + 1 - now else wait = window end
    end
  end
  if conc >= 0 then
    if n / math.max(conc, 1) > load then load = n / math.max(conc, 1) end
    if n >= conc then wait = math.max(wait, concurrency_wait()) end
  elseif spread then
    -- Without a limit, the lease count alone (scaled below any fraction) spreads the work.
    if n * 0.000001 > load then load = n * 0.000001 end
  end
  if wait < 0 then wait = 0 end
  return wait, load
end

-- A key's health record: cooldown until, consecutive failures, probing (0/1), probe expiry,
-- disabled (0/1), failure average, then the probe's lease id (which may hold spaces).
-- `release.lua` writes the same shape.
local function parse_health(record)
  local cd, f, p, pe, d, e, pl =
    string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
  if not cd then return nil end
  return {cd = tonumber(cd), f = tonumber(f), p = p, pe = tonumber(pe), d = d,
    e = tonumber(e), pl = pl}
end

local best, best_load, best_key_load, best_ewma, best_failures, best_probing

-- How long this dispatch must wait (0 = it can go now, with `best` the key to use).
local function decide()
  local shared_wait = 0
  if global_rpm >= 0 or global_conc >= 0 then
    shared_wait = check(KEYS[4], global_rpm, global_conc, count(1))
  end
  local tenant_wait = check(KEYS[5], tenant_rpm, tenant_conc, count(2))
  if tenant_wait > shared_wait then shared_wait = tenant_wait end

  best = nil
  local soonest
  -- When the global or tenant level is full, its wait is the answer: no candidate needs a look.
  if needs_key and shared_wait == 0 then
    -- Keys of one project share its group: check each group once per call.
    local group_waits, group_loads = {}, {}
    for i = 1, candidates do
      local a = 14 + (i - 1) * 6
      local h = records[2 * i - 1] and parse_health(records[2 * i - 1])
      if not (h and h.d == '1') then
        local group_field = ARGV[a + 2]
        local group_wait, group_load = group_waits[group_field], group_loads[group_field]
        if not group_wait then
          group_wait, group_load =
            check(KEYS[5 + 2 * i], tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), count(2 * i + 2), true)
          local group_cd = tonumber(records[2 * i]) or 0
          if group_cd - now > group_wait then group_wait = group_cd - now end
          group_waits[group_field], group_loads[group_field] = group_wait, group_load
        end
        local wait, probing, ewma, failures = 0, false, 0, 0
        if h then
          wait = math.max(h.cd - now, 0)
          probing, ewma, failures = h.p == '1', h.e, h.f
          if probing and h.pl ~= '' and h.pe > now then
            -- After a cooldown one probe at a time decides whether the key is back.
            wait = math.max(wait, math.min(h.pe - now, busy))
          end
        end
        local key_wait, key_load = 0, 0
        if wait == 0 and group_wait == 0 then
          key_wait, key_load =
            check(KEYS[4 + 2 * i], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), count(2 * i + 1), true)
        end
        wait = math.max(wait, key_wait, group_wait)
        if wait > 0 then
          if not soonest or wait < soonest then soonest = wait end
        else
          local load = math.max(key_load, group_load)
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

  if needs_key and not best then
    local key_wait = soonest or tonumber(ARGV[4])
    if key_wait > shared_wait then return key_wait end
  end
  return shared_wait
end

local wait = decide()
if wait > 0 and not reclaimed and reclaim() > 0 then
  -- Some of what looked full was held by leases that had already expired.
  read_counts()
  first_expiry = nil
  wait = decide()
end
if wait > 0 then return {0, wait} end

-- The lease id names every level it holds, so a release (or its expiry) needs no lookup:
-- `<start>-<random>|<global counted>|<key>|<group>|<tenant>`.
local flag = '0'
if global_conc >= 0 then flag = '1' end
local key_id, group_id, a = '', ''
if best then
  a = 14 + (best - 1) * 6
  key_id, group_id = string.sub(ARGV[a + 1], 3), string.sub(ARGV[a + 2], 3)
end
local short = now .. '-' .. ARGV[5]
local lease = table.concat({short, flag, key_id, group_id, ARGV[13]}, '|')

local writes = {ARGV[12], count(2) + 1}
if flag == '1' then
  writes[3], writes[4] = 'g', count(1) + 1
end
if best then
  local n = #writes
  writes[n + 1], writes[n + 2] = ARGV[a + 1], count(2 * best + 1) + 1
  writes[n + 3], writes[n + 4] = ARGV[a + 2], count(2 * best + 2) + 1
end
local ttl = ARGV[11]
redis.call('HSET', counts, unpack(writes))
redis.call('PEXPIRE', counts, ttl)
redis.call('ZADD', index, now + tonumber(ARGV[1]), lease)
redis.call('PEXPIRE', index, ttl)

-- Stale admissions never change a count (counts are by range); dropping them on about one
-- call in sixteen keeps the logs small without paying for it on every call.
local function log(z)
  if prune then redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. (now - window)) end
  redis.call('ZADD', z, now, short)
  redis.call('PEXPIRE', z, window + 1000)
end
if global_rpm >= 0 then log(KEYS[4]) end
if tenant_rpm >= 0 then log(KEYS[5]) end
if best then
  if tonumber(ARGV[a + 3]) >= 0 then log(KEYS[4 + 2 * best]) end
  if tonumber(ARGV[a + 5]) >= 0 then log(KEYS[5 + 2 * best]) end
  -- A probing key has a health record (and so the hash its TTL): this lease is its probe.
  if best_probing then
    local h = parse_health(redis.call('HGET', health, ARGV[a + 1]))
    if h then
      redis.call('HSET', health, ARGV[a + 1], string.format('%d %d %s %d %s %s %s',
        h.cd, h.f, h.p, now + tonumber(ARGV[1]), h.d, tostring(h.e), lease))
    end
  end
end
return {1, lease, key_id}
