-- Claim a transaction id for the API before it publishes: bind the id to
-- this body for good, and take the lease that lets one request publish it.
-- A function, `claim`: the store runs it alone (KEYS[1], ARGV[1..4], in the
-- order of its arguments) or for each item of the requests of one call,
-- after their keys' `rate_limit` (claim_batch.lua; on one Redis both keys
-- go to one script: one round trip, not two).
--
-- record     tx record hash ({ns}:tx:<id>)
-- request_fp fingerprint of the request
-- lease_ms   lease length in milliseconds
-- token      lease token (random, identifies this claim)
-- ttl_secs   seconds to keep the record (the outcome TTL)
-- now_us     Redis's clock (clock.lua's `clock_us`, read once per call)
--
-- Returns {verdict, reason, balance_after, posting}, verdict one of:
--   claimed   this request holds the lease and may publish
--   conflict  the id is bound to another body
--   leased    the same body is being published by another request now
--   pending | applied | rejected   the same body was accepted already
--     (a rejected postings transaction: `posting` the index that failed)
--
-- Two rules, kept apart:
-- - The binding: the first claim writes `fp`, and the record is kept for the
--   outcome TTL whether or not its publish succeeds (a publish that timed
--   out may still land in Kafka). Another body is a conflict for as long as
--   outcomes are kept; nothing here ever changes `fp`.
-- - The lease (`lease`, `lease_until_ms` on Redis's clock) only keeps two
--   requests of the same body from publishing at once (409). It ends by
--   time (a crashed API) or by release.lua (a failed publish); then the same
--   body may be claimed again, and the processed flag of the apply script
--   catches a record that landed twice.

local function claim(record, request_fp, lease_ms, token, ttl_secs, now_us)
  local now_ms = math.floor(now_us / 1000)
  local lease_until = string.format('%d', now_ms + tonumber(lease_ms))

  local current = redis.call('HMGET', record, 'fp', 'state', 'reason', 'balance_after',
    'accepted', 'lease_until_ms', 'lease', 'posting')
  local fp, state = current[1], current[2]
  if not fp then
    redis.call('HSET', record, 'fp', request_fp, 'lease', token, 'lease_until_ms', lease_until)
    redis.call('EXPIRE', record, ttl_secs)
    return {'claimed', '', '', ''}
  end
  if fp ~= request_fp then
    return {'conflict', '', '', ''}
  end
  if state == 'applied' or state == 'rejected' then
    return {state, current[3] or '', current[4] or '', current[8] or ''}
  end
  if current[5] then
    return {'pending', '', '', ''}
  end
  -- Another request's lease that has not ended. This request's own (a
  -- batch claimed again after some of its slots answered NOSCRIPT) is
  -- still this request's: claimed.
  if current[6] and tonumber(current[6]) > now_ms and current[7] ~= token then
    return {'leased', '', '', ''}
  end
  redis.call('HSET', record, 'lease', token, 'lease_until_ms', lease_until)
  return {'claimed', '', '', ''}
end
