-- Claim every id of a batch that lives in one slot, in one script call:
-- claim.lua's `claim` (the store puts clock.lua and that file before this
-- one) for each, in order, exactly as if each were claimed alone, at one
-- instant of Redis's clock.
--
-- KEYS[i]        tx record hash of the i-th id
-- ARGV[1]        lease length in milliseconds
-- ARGV[2]        seconds to keep the records (the outcome TTL)
-- ARGV[2i + 1]   fingerprint of the i-th request
-- ARGV[2i + 2]   lease token of the i-th claim
--
-- Returns one {verdict, reason, balance_after} per key, in order.

local now = clock_us()
local answers = {}
for i, record in ipairs(KEYS) do
  answers[i] = claim(record, ARGV[2 * i + 1], ARGV[1], ARGV[2 * i + 2], ARGV[2], now)
end
return answers
