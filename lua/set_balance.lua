-- The admin setter: set an account's balance, leaving room below 2^53-1
-- for the money in flight out of it (what sagas debited and may refund),
-- so that no refund can ever push the balance past the limit.
--
-- KEYS[1] the account's balance              ({tag}:bal:<account>)
-- KEYS[2] money in flight out of the account ({tag}:held:<account>)
-- ARGV[1] the balance, 0 ..= 2^53-1 (validated before it gets here)
--
-- Returns {1, held} when set, {0, held} (nothing written) when the balance
-- plus what is held would pass 2^53-1.

-- The store puts money.lua (has_room, digits) before this file.

local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if not has_room(tonumber(ARGV[1]), 0, held) then
  return {0, digits(held)}
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, digits(held)}
