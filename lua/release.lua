-- Give a claimed id back after a failed publish, so a retry can claim it.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] lease token of the claim being released
--
-- Only this claim's own lease is removed: if it ran out and another request
-- claimed the id, or a consumer settled it, nothing changes.

if redis.call('HGET', KEYS[1], 'state') == 'leased'
   and redis.call('HGET', KEYS[1], 'lease') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
