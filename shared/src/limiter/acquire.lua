-- Take every permit of one or more dispatches in one atomic call: each request gets every
-- permit it needs at every level, or none, as if the requests had come one after another at
-- the same instant. Dispatches that arrive while a call is in flight ride together in the next
-- one, so the fixed cost of a call (the clock, the reads, the writes) is paid once per call,
-- not once per dispatch.
--
-- Concurrency is counted, not scanned: the counts hash holds the live lease count of every
-- level, and the lease index holds each lease once, scored by its expiry, with the levels it
-- holds in its name. Requests per minute are exact sliding logs, kept only for levels that
-- have such a limit. Key health is one hash for the pool, with a record only for keys that are
-- not simply healthy.
--
-- KEYS: counts hash, lease index, health hash, global log, then two per candidate (key log,
--   group log), then one per request (tenant log).
-- ARGV: window ms, busy retry ms, no-key retry ms, global rpm, global concurrency (-1 =
--   unlimited), state ttl ms, prune (0/1), candidate count, request count, then six per
--   candidate: key field ('k:' .. key), group field ('q:' .. group), key rpm, key concurrency,
--   group rpm, group concurrency; then six per request: lease ms, lease id suffix, needs key
--   (0/1), tenant rpm, tenant concurrency, tenant id.
-- Returns three per request: 1, lease id, key id ('' without a key); or 0, wait ms, ''.
--
-- The clock is the server's: callers pass no time, so a skewed caller cannot widen a window.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts, index, health = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[1])
local busy = tonumber(ARGV[2])
local no_key_retry = tonumber(ARGV[3])
local global_rpm, global_conc = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl = ARGV[6]
local prune = ARGV[7] == '1'
local ncand, nreq = tonumber(ARGV[8]), tonumber(ARGV[9])
local request_base = 9 + 6 * ncand

local cands = {}
for i = 1, ncand do
  local a = 9 + (i - 1) * 6
  cands[i] = {kf = ARGV[a + 1], qf = ARGV[a + 2], krpm = tonumber(ARGV[a + 3]),
    kconc = tonumber(ARGV[a + 4]), qrpm = tonumber(ARGV[a + 5]), qconc = tonumber(ARGV[a + 6]),
    klog = KEYS[3 + 2 * i], qlog = KEYS[4 + 2 * i]}
end

-- Live lease counts of every level this call may touch, read once and kept here; `dirty`
-- names the fields to write back at the end.
local fields, held, dirty = {}, {}, {}
local function want(f)
  if held[f] == nil then
    held[f] = 0
    fields[#fields + 1] = f
  end
end
want('g')
for i = 1, ncand do
  want(cands[i].kf)
  want(cands[i].qf)
end
local requests, any_key = {}, false
for j = 1, nreq do
  local a = request_base + (j - 1) * 6
  local r = {lease = tonumber(ARGV[a + 1]), suffix = ARGV[a + 2], needs_key = ARGV[a + 3] == '1',
    rpm = tonumber(ARGV[a + 4]), conc = tonumber(ARGV[a + 5]), tenant = ARGV[a + 6],
    log = KEYS[4 + 2 * ncand + j]}
  r.tf = 't:' .. r.tenant
  want(r.tf)
  if r.needs_key then any_key = true end
  requests[j] = r
end

-- Leases that expired without a release: give their counts back. Counts that still hold them
-- only ever overstate a level, so this runs on about one call in sixteen and when a level
-- looks full (before a denial is answered), at most once per call.
local reclaimed, loaded = false, false
local first_expiry
local function reclaim()
  reclaimed = true
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
    if loaded and held[field] ~= nil then
      -- Kept here once read: the final write stores it.
      held[field] = math.max(held[field] - n, 0)
      dirty[field] = true
    elseif redis.call('HINCRBY', counts, field, -n) <= 0 then
      redis.call('HDEL', counts, field)
    end
  end
  redis.call('ZREM', index, unpack(expired))
  first_expiry = nil
  return #expired
end
if prune then reclaim() end

local values = redis.call('HMGET', counts, unpack(fields))
for i, f in ipairs(fields) do held[f] = tonumber(values[i]) or 0 end
loaded = true

-- A key's health record: cooldown until, consecutive failures, probing (0/1), probe expiry,
-- disabled (0/1), failure average, then the probe's lease id (which may hold spaces).
-- `release.lua` writes the same shape.
local function parse_health(record)
  if not record then return nil end
  local cd, f, p, pe, d, e, pl =
    string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
  if not cd then return nil end
  return {cd = tonumber(cd), f = tonumber(f), p = p, pe = tonumber(pe), d = d,
    e = tonumber(e), pl = pl}
end
if any_key and ncand > 0 then
  local hfields = {}
  for i = 1, ncand do
    hfields[2 * i - 1], hfields[2 * i] = cands[i].kf, cands[i].qf
  end
  local records = redis.call('HMGET', health, unpack(hfields))
  for i = 1, ncand do
    cands[i].h = parse_health(records[2 * i - 1])
    cands[i].qcd = tonumber(records[2 * i]) or 0
  end
end
local health_dirty = {}

-- Admissions per log: counted once per call, then kept up to date here. Admissions of this
-- call are written at the end; all of them carry `now`.
local log_count, log_new = {}, {}
local function in_window(log)
  local a = log_count[log]
  if not a then
    a = redis.call('ZCOUNT', log, now - window, '+inf')
    log_count[log] = a
  end
  return a
end

-- The earliest expiry of any lease: no level's first lease ends sooner, so waking then is
-- never too late. Read at most once per call, and only when some level is full.
local pending_expiry
local function concurrency_wait()
  if not first_expiry then
    local e = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
    first_expiry = tonumber(e[2] or (now + busy))
  end
  -- Leases granted earlier in this call are not stored yet and may end sooner.
  local soonest = first_expiry
  if pending_expiry and pending_expiry < soonest then soonest = pending_expiry end
  return math.max(math.min(soonest - now, busy), 1)
end

-- How long until a level could admit one more (0 = now), and how full it is (`spread`: also
-- when it has no concurrency limit).
local function check(log, rpm, conc, n, spread)
  local wait, load = 0, 0
  if rpm >= 0 then
    local a = in_window(log)
    load = a / math.max(rpm, 1)
    if a >= rpm then
      -- The admission whose ageing out brings the count below the limit. Those of this call
      -- are the newest (they came at `now`) and are not stored yet.
      local stored = a - #(log_new[log] or {})
      if a - rpm < stored then
        local e = redis.call('ZRANGEBYSCORE', log, now - window, '+inf', 'WITHSCORES',
          'LIMIT', a - rpm, 1)
        if e[2] then wait = tonumber(e[2]) + window + 1 - now else wait = window end
      else
        wait = window + 1
      end
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

-- How long request `r` must wait (0 = it can go now), and the candidate to use.
local group_waits, group_loads, group_seen, decisions = {}, {}, {}, 0
local function decide(r)
  local shared_wait = 0
  if global_rpm >= 0 or global_conc >= 0 then
    shared_wait = check(KEYS[4], global_rpm, global_conc, held['g'])
  end
  local tenant_wait = check(r.log, r.rpm, r.conc, held[r.tf])
  if tenant_wait > shared_wait then shared_wait = tenant_wait end
  if not r.needs_key then return shared_wait end

  local best, best_load, best_key_load, best_ewma, best_failures
  local soonest
  -- When the global or tenant level is full, its wait is the answer: no candidate needs a look.
  if shared_wait == 0 then
    -- Keys of one project share its group: check each group once per request (the tables
    -- are the call's, marked with the request they were filled for).
    decisions = decisions + 1
    for i = 1, ncand do
      local c = cands[i]
      local h = c.h
      if not (h and h.d == '1') then
        local group_wait, group_load
        if group_seen[c.qf] == decisions then
          group_wait, group_load = group_waits[c.qf], group_loads[c.qf]
        else
          group_wait, group_load = check(c.qlog, c.qrpm, c.qconc, held[c.qf], true)
          if c.qcd - now > group_wait then group_wait = c.qcd - now end
          group_waits[c.qf], group_loads[c.qf], group_seen[c.qf] =
            group_wait, group_load, decisions
        end
        local wait, ewma, failures = 0, 0, 0
        if h then
          wait = math.max(h.cd - now, 0)
          ewma, failures = h.e, h.f
          if h.p == '1' and h.pl ~= '' and h.pe > now then
            -- After a cooldown one probe at a time decides whether the key is back.
            wait = math.max(wait, math.min(h.pe - now, busy))
          end
        end
        local key_wait, key_load = 0, 0
        if wait == 0 and group_wait == 0 then
          key_wait, key_load = check(c.klog, c.krpm, c.kconc, held[c.kf], true)
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
            best, best_load, best_key_load, best_ewma, best_failures =
              i, load, key_load, ewma, failures
          end
        end
      end
    end
  end

  -- A full global or tenant level answers with its own wait; only when the keys were looked at
  -- and none could admit does theirs count.
  if not best and shared_wait == 0 then
    return soonest or no_key_retry
  end
  return shared_wait, best
end

local function admit(log, member)
  log_count[log] = in_window(log) + 1
  local pending = log_new[log]
  if not pending then
    pending = {}
    log_new[log] = pending
  end
  pending[#pending + 1] = member
end

local function take(field)
  held[field] = held[field] + 1
  dirty[field] = true
end

local out, index_adds = {}, {}
for j = 1, nreq do
  local r = requests[j]
  local wait, best = decide(r)
  if wait > 0 and not reclaimed and reclaim() > 0 then
    -- Some of what looked full was held by leases that had already expired.
    wait, best = decide(r)
  end
  local o = 3 * j - 2
  if wait > 0 then
    out[o], out[o + 1], out[o + 2] = 0, wait, ''
  else
    -- The lease id names every level it holds, so a release (or its expiry) needs no lookup:
    -- `<start>-<random>|<global counted>|<key>|<group>|<tenant>`.
    local flag = '0'
    if global_conc >= 0 then flag = '1' end
    local c = best and cands[best]
    local key_id, group_id = '', ''
    if c then key_id, group_id = string.sub(c.kf, 3), string.sub(c.qf, 3) end
    local short = now .. '-' .. r.suffix
    local lease = short .. '|' .. flag .. '|' .. key_id .. '|' .. group_id .. '|' .. r.tenant

    take(r.tf)
    if flag == '1' then take('g') end
    local expiry = now + r.lease
    index_adds[#index_adds + 1] = expiry
    index_adds[#index_adds + 1] = lease
    if not pending_expiry or expiry < pending_expiry then pending_expiry = expiry end

    if global_rpm >= 0 then admit(KEYS[4], short) end
    if r.rpm >= 0 then admit(r.log, short) end
    if c then
      take(c.kf)
      take(c.qf)
      if c.krpm >= 0 then admit(c.klog, short) end
      if c.qrpm >= 0 then admit(c.qlog, short) end
      -- A probing key has a health record (and so the hash its TTL): this lease is its probe.
      local h = c.h
      if h and h.p == '1' then
        h.pe, h.pl = expiry, lease
        health_dirty[c.kf] = h
      end
    end
    out[o], out[o + 1], out[o + 2] = 1, lease, key_id
  end
end

-- Writes, one call per structure.
local writes, zeros = {}, {}
for field in pairs(dirty) do
  if held[field] > 0 then
    writes[#writes + 1] = field
    writes[#writes + 1] = held[field]
  else
    zeros[#zeros + 1] = field
  end
end
if #writes > 0 then redis.call('HSET', counts, unpack(writes)) end
if #zeros > 0 then redis.call('HDEL', counts, unpack(zeros)) end
if #index_adds > 0 then
  redis.call('PEXPIRE', counts, ttl)
  redis.call('ZADD', index, unpack(index_adds))
  redis.call('PEXPIRE', index, ttl)
end

-- Stale admissions never change a count (counts are by range); dropping them on about one
-- call in sixteen keeps the logs small without paying for it on every call.
for log, members in pairs(log_new) do
  if prune then redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. (now - window)) end
  local adds = {}
  for i, m in ipairs(members) do
    adds[2 * i - 1], adds[2 * i] = now, m
  end
  redis.call('ZADD', log, unpack(adds))
  redis.call('PEXPIRE', log, window + 1000)
end

for field, h in pairs(health_dirty) do
  redis.call('HSET', health, field, string.format('%d %d %s %d %s %s %s',
    h.cd, h.f, h.p, h.pe, h.d, tostring(h.e), h.pl))
end
return out
