-- Write a transaction's outcome into its tx record, when the outcome was
-- decided in another slot (a saga's last step, or an apply whose flag is not
-- the tx record). The outcome is already final where it was decided; this
-- only publishes it to GET /transactions/{id}, so the first write wins and
-- a repeat (a redelivered record) changes nothing.
--
-- KEYS[1] tx record hash ({tag}:tx:<id>)
-- ARGV[1] state: applied | rejected
-- ARGV[2] reason ('' when applied)
-- ARGV[3] balance_after ('' when rejected)
-- ARGV[4] when it was decided (ms since the epoch)
-- ARGV[5] fingerprint of the transaction (bound here if no claim bound it)
-- ARGV[6] seconds to keep the record
-- ARGV[7] the asset of the account it ended on ('' : none)
-- ARGV[8] a rejected postings transaction's failed posting ('' : none)
-- ARGV[9] a postings transaction's assets, one a posting ('' : not postings)
--
-- Returns 1 if it wrote the outcome, 0 if one was there (its TTL renewed).

local state = redis.call('HGET', KEYS[1], 'state')
if state == 'applied' or state == 'rejected' then
  -- Still a write (the TTL renewed), so a WAIT after it covers the first.
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return 0
end
redis.call('HSETNX', KEYS[1], 'fp', ARGV[5])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2],
  'balance_after', ARGV[3], 'applied_at_ms', ARGV[4], 'asset', ARGV[7], 'posting', ARGV[8],
  'assets', ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
