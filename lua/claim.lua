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
-- A lease that ends (crashed API, lost publish) frees the id; a record that
-- did reach Kafka is still applied at most once by the processed flag.

local current = redis.call('HMGET', KEYS[1], 'state', 'fp', 'reason', 'balance_after')
if not current[1] then
  redis.call('HSET', KEYS[1], 'state', 'leased', 'fp', ARGV[1], 'lease', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed', '', ''}
end
if current[2] ~= ARGV[1] then
  return {'conflict', '', ''}
end
return {current[1], current[3] or '', current[4] or ''}
