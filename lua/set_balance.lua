-- The admin setter: set an account's balance, leaving room below 2^53-1
-- for the money in flight out of it (what sagas debited and may refund),
-- so that no refund can ever push the balance past the limit. A missing
-- account is made.
--
-- KEYS[1] the account          ({tag}:acct:<account>, money.lua)
-- KEYS[2] the account's history ({tag}:hist:<account>)
-- ARGV[1] the balance, 0 ..= 2^53-1 (validated before it gets here)
-- ARGV[2] milliseconds of history to keep (0: none)
--
-- A set is an entry in the history (type `set`, its amount the balance
-- set, its delta the change), so that replaying the entries gives the
-- balance; a refused set writes nothing.
--
-- Returns {1, held, pending} when set; {0, held, pending} (nothing
-- written) when the balance plus what is in flight would pass 2^53-1;
-- {2, held, pending} (nothing written) when the balance would be below
-- what holds keep (their captures must find the money).

-- The store puts money.lua (has_room, digits, account_at, log) before this
-- file.

local account = account_at(KEYS[1]) or {balance = 0, pending = 0, held = 0}
local balance = tonumber(ARGV[1])
if not has_room(balance, 0, account.held) then
  return {0, digits(account.held), digits(account.pending)}
end
if balance < account.pending then
  return {2, digits(account.held), digits(account.pending)}
end
redis.call('HSET', KEYS[1], 'balance', ARGV[1])
log(KEYS[2], ARGV[2], '', '', 'set', ARGV[1], digits(balance - account.balance), '',
  'applied', '', ARGV[1], '')
return {1, digits(account.held), digits(account.pending)}
