-- Give a claimed id back after a failed publish, so a retry can claim it.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] lease token of the claim being released
--
-- Only this claim's own lease is removed, and only while nothing else
-- happened to the id: if the lease ran out and another request claimed it,
-- or the record was accepted or settled after all, nothing changes.

local current = redis.call('HMGET', KEYS[1], 'state', 'lease', 'accepted')
if current[1] == 'leased' and current[2] == ARGV[1] and not current[3] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
