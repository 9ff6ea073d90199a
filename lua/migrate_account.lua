-- Brings one account to key layout 3, in the account's slot. Layout 1 kept
-- it as three keys (its balance, the money its holds keep, the money in
-- flight out of it); layout 2 as one record (money.lua's account_at)
-- without an asset or a creation time. Idempotent: an account in layout
-- 3 already is left as it is.
--
-- KEYS[1] layout 1's balance            ({tag}:bal:<account>)
-- KEYS[2] layout 1's pending            ({tag}:pending:<account>)
-- KEYS[3] layout 1's money in flight    ({tag}:held:<account>)
-- KEYS[4] the account's record          ({tag}:acct:<account>)
-- ARGV[1] the asset an account without one holds (the default asset)
-- ARGV[2] now, ms since the epoch: its `created` (when it was made is
--         not known)
--
-- Returns 1 when it changed the account, 0 when there was nothing to do.

local balance = redis.call('GET', KEYS[1])
if balance then
  redis.call('HSET', KEYS[4], 'balance', balance,
    'pending', redis.call('GET', KEYS[2]) or '0',
    'held', redis.call('GET', KEYS[3]) or '0')
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
elseif redis.call('HEXISTS', KEYS[4], 'asset') == 1
    or redis.call('HEXISTS', KEYS[4], 'balance') == 0 then
  return 0
end
redis.call('HSETNX', KEYS[4], 'asset', ARGV[1])
redis.call('HSETNX', KEYS[4], 'created', ARGV[2])
return 1
