-- Read load and health figures of some keys.
--
-- KEYS: counts hash, lease index, health hash, then one per key: its outcomes.
-- ARGV: window ms, outcomes reported, outcomes kept, then two per key: key id, group id
--   ('' when unknown).
-- Returns {now, then per key {in flight, attempts started in the last window, cooldown until,
--   failures, disabled, newest outcomes}}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local reported = tonumber(ARGV[2])

-- Live leases per key, and those of them started inside the window. Leases that expired
-- without a release still count until an acquire reclaims them; they are not in flight.
local live, recent_live = {}, {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  local start, k = string.match(m, '^(%d+)-[^|]*|[^|]*|([^|]*)|')
  if k then
    live[k] = (live[k] or 0) + 1
    if tonumber(start) >= now - window then recent_live[k] = (recent_live[k] or 0) + 1 end
  end
end

local out = {now}
for i = 1, #KEYS - 3 do
  local key, group = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local h = redis.call('HMGET', KEYS[3], 'k:' .. key, 'q:' .. group)
  local cd, failures, disabled = 0, 0, 0
  if h[1] then
    local c1, c2, d = string.match(h[1], '^(%S+) (%S+) %S+ %S+ (%S+) ')
    cd, failures = tonumber(c1) or 0, tonumber(c2) or 0
    if d == '1' then disabled = 1 end
  end
  cd = math.max(cd, tonumber(h[2] or 0) or 0)
  local outcomes = redis.call('LRANGE', KEYS[3 + i], 0, tonumber(ARGV[3]) - 1)
  local recent = recent_live[key] or 0
  local newest = {}
  for j, o in ipairs(outcomes) do
    local start = tonumber(string.match(o, '^%d+:%d+:(%d+)$') or 0)
    if start >= now - window then recent = recent + 1 end
    if j <= reported then newest[j] = o end
  end
  out[#out + 1] = {live[key] or 0, recent, string.format('%d', cd), failures, disabled, newest}
end
return out
