-- Claim a transaction id for the API before it publishes, as a lease.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] fingerprint of the request
-- ARGV[2] lease length in milliseconds
-- ARGV[3] lease token (random, identifies this claim)
--
-- Returns {verdict, reason, balance_after}, verdict one of:
--   claimed   the id was free; it is leased to this request until the lease ends
--   conflict  the id is known with another body
--   leased    the same request is in flight elsewhere
--   pending | applied | rejected   the same request was accepted already
--
-- The record's fields: `state` (leased, then applied|rejected once a consumer
-- settled it), `accepted` (1 once Kafka acknowledged the record: written by
-- the API with plain HSET+EXPIRE, no script), `fp`, `lease`, and the outcome.
-- A lease that ends (crashed API, lost publish) frees the id; a record that
-- did reach Kafka is still applied at most once by the processed flag.

local current = redis.call('HMGET', KEYS[1], 'state', 'fp', 'reason', 'balance_after', 'accepted')
local state, accepted = current[1], current[5]
if not state and not accepted then
  redis.call('HSET', KEYS[1], 'state', 'leased', 'fp', ARGV[1], 'lease', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed', '', ''}
end
if current[2] ~= ARGV[1] then
  return {'conflict', '', ''}
end
if state == 'applied' or state == 'rejected' then
  return {state, current[3] or '', current[4] or ''}
end
if accepted then
  return {'pending', '', ''}
end
return {'leased', '', ''}
