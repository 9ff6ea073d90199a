-- End this request's lease after its publish failed, so a retry of the same
-- body can claim the id at once. The binding (`fp`) stays: that publish may
-- still land in Kafka, so another body stays a conflict.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] lease token of the claim being released
--
-- Returns 1 if the lease was this request's and is gone, else 0 (it ran out
-- and another request of the same body holds it now, or the record was
-- accepted or settled meanwhile: both remove the lease).

if redis.call('HGET', KEYS[1], 'lease') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease', 'lease_until_ms')
  return 1
end
return 0
