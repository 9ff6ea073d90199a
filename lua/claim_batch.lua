-- The claims of one or more requests (a single request, a batch's items,
-- or the requests gathered into one call), in one script call: for each
-- request, in order, rate_limit.lua's `rate_limit` for all of its items at
-- once (when it has a limit), then claim.lua's `claim` for each item the
-- limit lets go (the first ones), exactly as if each were claimed alone,
-- all at one instant of Redis's clock. The store puts clock.lua, both of
-- those files, then this one. On a Redis Cluster a key's rate lives in
-- another slot than its transactions: the store counts the keys first
-- (rate_limit.lua alone) and claims each slot's ids here as one request
-- without a limit.
--
-- ARGV[1]   lease length in milliseconds
-- ARGV[2]   seconds to keep the records (the outcome TTL)
-- then for each request:
--   its key's emission interval in µs (0: no limit), its key's burst,
--   n (how many items), then n times: fingerprint, lease token
-- KEYS, for each request in the same order: its key's theoretical arrival
--   time (only when it has a limit), then its n tx records
--
-- Returns {claims, rates}:
--   claims  one {verdict, reason, balance_after, posting} per item, in order
--           (claim.lua's answer; `limited` past what the limit let go:
--           nothing claimed)
--   rates   one {allowed, remaining, retry_after_us, reset_us} per request
--           (rate_limit's answer; {n, 0, 0, 0} without a limit)

local now = clock_us()
local claims, rates = {}, {}
local key, arg = 1, 3
while arg <= #ARGV do
  local interval = tonumber(ARGV[arg])
  local burst = tonumber(ARGV[arg + 1])
  local n = tonumber(ARGV[arg + 2])
  arg = arg + 3
  local rate = {n, 0, 0, 0}
  if interval > 0 then
    rate = rate_limit(KEYS[key], interval, burst, n, now)
    key = key + 1
  end
  rates[#rates + 1] = rate
  for i = 1, n do
    if i <= rate[1] then
      claims[#claims + 1] = claim(KEYS[key], ARGV[arg], ARGV[1], ARGV[arg + 1], ARGV[2], now)
    else
      claims[#claims + 1] = {'limited', '', '', ''}
    end
    key = key + 1
    arg = arg + 2
  end
end
return {claims, rates}
