-- Claims of concurrent single requests on one Redis, each counted against
-- its API key's rate limit first, in one script call: for each request, in
-- order, rate_limit.lua's `rate_limit` (when the request has a limit), then,
-- only if it lets the request go, claim.lua's `claim` (the store puts
-- clock.lua and both files before this one), exactly as if each came alone,
-- all at one instant of Redis's clock. On a Redis Cluster
-- a key's rate lives in another slot than the transactions, so the store
-- counts the keys first and claims after.
--
-- KEYS[2i - 1]   tx record hash of the i-th request ({ns}:tx:<id>)
-- KEYS[2i]       its API key's theoretical arrival time (its tx record
--                again when it has no limit: then not read)
-- ARGV[1]        lease length in milliseconds
-- ARGV[2]        seconds to keep the records (the outcome TTL)
-- ARGV[4i - 1]   fingerprint of the i-th request
-- ARGV[4i]       its lease token
-- ARGV[4i + 1]   its key's emission interval µs, 0 when it has no limit
-- ARGV[4i + 2]   its key's burst
--
-- Returns one {verdict, reason, balance_after, allowed, remaining,
-- retry_after_us, reset_us} per request: claim's answer (verdict `limited`
-- when the rate refused the request: nothing was claimed or counted) and
-- rate_limit's (all 0 when it has no limit).

local now = clock_us()
local answers = {}
for i = 1, #KEYS / 2 do
  local interval = tonumber(ARGV[4 * i + 1])
  local rate = {1, 0, 0, 0}
  if interval > 0 then
    rate = rate_limit(KEYS[2 * i], interval, tonumber(ARGV[4 * i + 2]), 1, now)
  end
  if rate[1] == 0 then
    answers[i] = {'limited', '', '', rate[1], rate[2], rate[3], rate[4]}
  else
    local claimed = claim(KEYS[2 * i - 1], ARGV[4 * i - 1], ARGV[1], ARGV[4 * i], ARGV[2], now)
    answers[i] = {claimed[1], claimed[2], claimed[3], rate[1], rate[2], rate[3], rate[4]}
  end
end
return answers
