-- Moves one account written by layout 1 (three keys: its balance, the
-- money its holds keep, the money in flight out of it) into its record
-- (money.lua's account_at), all in the account's slot. Idempotent: an
-- account already moved (its balance key gone) is left as it is.
--
-- KEYS[1] layout 1's balance            ({tag}:bal:<account>)
-- KEYS[2] layout 1's pending            ({tag}:pending:<account>)
-- KEYS[3] layout 1's money in flight    ({tag}:held:<account>)
-- KEYS[4] the account's record          ({tag}:acct:<account>)
--
-- Returns 1 when it moved the account, 0 when there was nothing to move.

local balance = redis.call('GET', KEYS[1])
if not balance then
  return 0
end
redis.call('HSET', KEYS[4], 'balance', balance,
  'pending', redis.call('GET', KEYS[2]) or '0',
  'held', redis.call('GET', KEYS[3]) or '0')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
