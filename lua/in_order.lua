-- Keeps the applies of one pipeline in order. Redis runs every command of a
-- pipeline even when one fails (NOSCRIPT while another client is still
-- loading the scripts after a restart or failover, or an error inside a
-- script), so without this a record after a failed one would be applied
-- before it: a hold then a debit would become the debit, then the hold
-- refused for funds. The store puts this file after the script it guards,
-- whose body it wraps as `run` (store/scripts.rs):
--
-- KEYS[#KEYS]  this pipeline's order key in the slot ({tag}:order:<token>)
-- ARGV[#ARGV]  this call's place in the slot's pipeline: 1, 2, ...; negative
--              for the last call (nothing follows it: the key is not written)
--
-- Both are taken off before the body runs, so it sees its own KEYS and ARGV.
-- A call runs only if the call before it in the pipeline ran to the end;
-- else it answers {'skipped', '', '', 0, 0, ''} and writes nothing, and so does
-- every call after it: the store runs them again, in order, from the first
-- that did not run. A call that raises an error, or answers one, does not
-- count as run.

local order_key = table.remove(KEYS)
local place = tonumber(table.remove(ARGV))
local last = place < 0
place = math.abs(place)
if place > 1 and tonumber(redis.call('GET', order_key) or '0') ~= place - 1 then
  return {'skipped', '', '', 0, 0, ''}
end
local reply = run()
if type(reply) == 'table' and reply.err then
  return reply
end
if not last then
  -- Kept a minute: far longer than one pipeline takes.
  redis.call('SET', order_key, place, 'PX', 60000)
end
return reply
