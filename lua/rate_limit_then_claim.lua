-- A limited key's transaction on one Redis, in one round trip instead of
-- two: rate_limit.lua's `rate_limit`, then, only if it allows the request,
-- claim.lua's `claim` (the store puts both files before this one). On a
-- Redis Cluster the key's rate lives in another slot than the transaction,
-- so the store calls the two scripts one after the other there.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- KEYS[2] the API key's theoretical arrival time
-- ARGV[1..4] as claim's arguments: fingerprint, lease ms, lease token, TTL s
-- ARGV[5..6] as rate_limit's: emission interval µs, burst
--
-- Returns {verdict, reason, balance_after, allowed, remaining,
-- retry_after_us, reset_us}: claim's answer (verdict `limited` when the
-- rate refused the request: nothing was claimed) and rate_limit's.

local rate = rate_limit(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), 1)
if rate[1] == 0 then
  return {'limited', '', '', rate[1], rate[2], rate[3], rate[4]}
end
local claimed = claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {claimed[1], claimed[2], claimed[3], rate[1], rate[2], rate[3], rate[4]}
