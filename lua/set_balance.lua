-- The admin setter: set an account's balance within its bounds, counting
-- the money its holds keep (at least min + pending) and leaving room below
-- its max for the money in flight out of it (what sagas debited and may
-- refund), so that no refund can ever push the balance past the bound. A
-- missing account is made, of the default asset, with the default bounds.
--
-- KEYS[1] the account          ({tag}:acct:<account>, money.lua)
-- KEYS[2] the account's history ({tag}:hist:<account>)
-- ARGV[1] the balance, -(2^53-1) ..= 2^53-1 (validated before it gets here)
-- ARGV[2] milliseconds of history to keep (0: none)
-- ARGV[3] the default asset, for an account made here
-- ARGV[4] now, ms since the epoch (a made account's `created`)
--
-- A set is an entry in the history (type `set`, its amount the balance
-- set, its delta the change), so that replaying the entries gives the
-- balance; a refused set writes nothing.
--
-- Returns {answer, balance, pending, held, asset, min, max, meta,
-- created}: the account as it stands after the call (as it would have
-- been made, for a refused set of a missing one), answer being 1 when set;
-- 0 (nothing written) when the balance plus what is in flight would pass
-- max; 2 (nothing written) when the balance minus what holds keep would
-- be below min (their captures must find the money).

-- The store puts money.lua (has_room, digits, account_at, log) before this
-- file.

local account = account_at(KEYS[1])
local made = not account
if made then
  account = {balance = 0, pending = 0, held = 0, incoming = 0, asset = ARGV[3], min = 0, max = MAX}
end
local balance = tonumber(ARGV[1])
local function answer(code)
  local more = redis.call('HMGET', KEYS[1], 'meta', 'created')
  return {code, digits(account.balance), digits(account.pending), digits(account.held),
    account.asset, digits(account.min), digits(account.max), more[1] or '',
    more[2] or ARGV[4]}
end
if not has_room(0, balance, account.held + account.incoming, account.max) then
  return answer('0')
end
if balance - account.pending < account.min then
  return answer('2')
end
if made then
  redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'asset', ARGV[3], 'created', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'balance', ARGV[1])
end
log(KEYS[2], ARGV[2], '', '', 'set', ARGV[1], digits(balance - account.balance), '',
  'applied', '', ARGV[1], '')
account.balance = balance
return answer('1')
