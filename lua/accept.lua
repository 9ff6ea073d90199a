-- Mark a claimed id as pending once Kafka acknowledged its record.
--
-- KEYS[1] tx record hash ({ns}:tx:<id>)
-- ARGV[1] fingerprint of the request
-- ARGV[2] seconds to keep the record (>= the topic's retention)
--
-- A consumer may have settled the id already (it can be that fast): then the
-- outcome stays. Otherwise the lease becomes a pending record, whether or not
-- the lease had run out, because the record is in Kafka now.

local state = redis.call('HGET', KEYS[1], 'state')
if state == 'applied' or state == 'rejected' or state == 'pending' then
  return state
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'pending'
