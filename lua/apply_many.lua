-- Applies records of one slot in one call, in order: the store puts
-- money.lua, clock.lua and each apply script as a function of its name
-- (atomic_update, saga_step, hold, postings, posting_step) before this file
-- (store/scripts.rs).
-- One call for up to 100 records, not one each: each call costs Redis
-- several microseconds of its own.
--
-- A slot's calls go in one pipeline, and Redis runs every command of a
-- pipeline even when one fails (NOSCRIPT while another client is still
-- loading the scripts after a restart or failover, or an error inside a
-- script): so each call records its place under the pipeline's order key,
-- and a call runs only if the call before it ran to the end; else it
-- answers 'skipped' and writes nothing (the store runs it again).
--
-- KEYS[1] this pipeline's order key in the slot ({tag}:order:<token>)
-- KEYS[2..] every call's KEYS, one call's after the other's
-- ARGV[1] this call's place in the slot's pipeline: 1, 2, ...; negative
--         for the last (nothing follows it: the key is not written)
-- ARGV[2] the number of records; then for each, its script's name, the
--         number of its KEYS, the number of its ARGV, then its ARGV
--
-- Each record's script sees its own KEYS and ARGV, as when it ran alone
-- (the two tables are refilled in place: Redis keeps its globals
-- read-only). Returns each record's reply, in order. A record that
-- answers an error stops the call there and the error is the answer: the
-- records before it stay applied (Redis keeps a script's writes), the call
-- does not count as run, and the store runs the batch again, where their
-- flags make them repeats.

local order_key = KEYS[1]
local place = tonumber(ARGV[1])
local last = place < 0
place = math.abs(place)
if place > 1 and tonumber(redis.call('GET', order_key) or '0') ~= place - 1 then
  return 'skipped'
end

local scripts = {atomic_update = atomic_update, saga_step = saga_step, hold = hold,
  postings = postings, posting_step = posting_step}
local all_keys, all_args = {}, {}
for i = 1, #KEYS do all_keys[i] = KEYS[i] end
for i = 1, #ARGV do all_args[i] = ARGV[i] end

-- Refills `into` with items first .. first + count - 1 of `from`.
local function refill(into, from, first, count)
  for i = #into, 1, -1 do into[i] = nil end
  for i = 1, count do into[i] = from[first + i - 1] end
end

local replies = {}
local key_at, arg_at = 2, 3
for call = 1, tonumber(all_args[2]) do
  local script = scripts[all_args[arg_at]]
  if not script then
    return redis.error_reply('unknown apply script ' .. tostring(all_args[arg_at]))
  end
  local key_count, arg_count = tonumber(all_args[arg_at + 1]), tonumber(all_args[arg_at + 2])
  refill(KEYS, all_keys, key_at, key_count)
  refill(ARGV, all_args, arg_at + 3, arg_count)
  key_at, arg_at = key_at + key_count, arg_at + 3 + arg_count
  entries_written = 0
  local reply = script()
  if type(reply) == 'table' and reply.err then
    return reply
  end
  replies[call] = reply
end
if not last then
  -- Kept a minute: far longer than one pipeline takes.
  redis.call('SET', order_key, place, 'PX', 60000)
end
return replies
