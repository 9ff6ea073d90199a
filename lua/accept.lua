-- Mark an id accepted once Kafka acknowledged its record, if this request
-- still holds the lease. A function, `accept`: the store runs it for one id
-- or, in accept_batch.lua, for each id of a batch in one slot.
--
-- record  tx record hash ({ns}:tx:<id>)
-- fp      fingerprint of the published record
-- token   lease token of this request's claim
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

local function accept(record, fp, token)
  local current = redis.call('HMGET', record, 'fp', 'lease')
  if current[1] ~= fp then
    return 'conflict'
  end
  if current[2] == token then
    redis.call('HSET', record, 'accepted', '1')
    return 'accepted'
  end
  return 'not_owner'
end
