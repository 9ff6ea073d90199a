-- The admin setter: set an account's balance, leaving room below 2^53-1
-- for the money in flight out of it (what sagas debited and may refund),
-- so that no refund can ever push the balance past the limit.
--
-- KEYS[1] the account's balance              ({tag}:bal:<account>)
-- KEYS[2] money in flight out of the account ({tag}:held:<account>)
-- KEYS[3] money held on the account by holds ({tag}:pending:<account>)
-- KEYS[4] the account's history              ({tag}:hist:<account>)
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

-- The store puts money.lua (has_room, digits, log) before this file.

local held = tonumber(redis.call('GET', KEYS[2]) or '0')
local pending = tonumber(redis.call('GET', KEYS[3]) or '0')
if not has_room(tonumber(ARGV[1]), 0, held) then
  return {0, digits(held), digits(pending)}
end
if tonumber(ARGV[1]) < pending then
  return {2, digits(held), digits(pending)}
end
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], ARGV[1])
log(KEYS[4], ARGV[2], '', '', 'set', ARGV[1], digits(tonumber(ARGV[1]) - before), '',
  'applied', '', ARGV[1], '')
return {1, digits(held), digits(pending)}
