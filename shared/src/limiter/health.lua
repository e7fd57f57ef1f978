-- Read load and health figures of some keys.
--
-- KEYS: four per key: key set, key health, key samples, group health.
-- ARGV: window ms, samples kept.
-- Returns {now, then per key {in flight, admissions in window, cooldown until, failures,
--   disabled, samples}}.

local OFFSET = 10000000000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local out = {now}
for i = 1, #KEYS / 4 do
  local k = (i - 1) * 4
  local in_flight = redis.call('ZCOUNT', KEYS[k + 1], '(' .. (OFFSET + now), '+inf')
  local recent = redis.call('ZCOUNT', KEYS[k + 1], now - window, '(' .. OFFSET)
  local h = redis.call('HMGET', KEYS[k + 2], 'cd', 'f', 'd')
  local group_cd = tonumber(redis.call('HGET', KEYS[k + 4], 'cd') or 0)
  local cd = math.max(tonumber(h[1] or 0), group_cd)
  local disabled = 0
  if h[3] == '1' then disabled = 1 end
  local samples = redis.call('LRANGE', KEYS[k + 3], 0, tonumber(ARGV[2]) - 1)
  out[#out + 1] = {in_flight, recent, string.format('%d', cd), tonumber(h[2] or 0), disabled,
    samples}
end
return out
