-- Mark an id accepted once Kafka acknowledged its record, if this request
-- still holds the lease.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] fingerprint of the published record
-- ARGV[2] lease token of this request's claim
--
-- Returns:
--   accepted   this request holds the lease: `accepted` is set (claims of the same
--              body then answer pending, whatever the lease)
--   not_owner  the lease ran out and another request of the same body holds
--              it now; nothing is changed. The binding is this body, so the
--              record just published is the one bound to the id: the API
--              still answers 202 (until the holder accepts, or a consumer
--              settles the id, GET may answer 404)
--   conflict   the id is bound to another body (the record expired and was
--              claimed anew: only when the outcome TTL is shorter than a
--              publish, which the config refuses); nothing is changed

local current = redis.call('HMGET', KEYS[1], 'fp', 'lease')
if current[1] ~= ARGV[1] then
  return 'conflict'
end
if current[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'accepted', '1')
  return 'accepted'
end
return 'not_owner'
