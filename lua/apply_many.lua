-- Applies a slot's records in one call, in order: the store puts money.lua,
-- clock.lua and each apply script as a function of its name
-- (atomic_update, saga_step, hold) before this file (store/scripts.rs).
-- One call per slot, not one per record: each call costs Redis several
-- microseconds of its own, and records of one slot are applied in order
-- without an order key between calls.
--
-- KEYS   every call's KEYS, one call's after the other's
-- ARGV[1] the number of calls; then for each call, its script's name, the
--         number of its KEYS, the number of its ARGV, then its ARGV
--
-- Each call sees its own KEYS and ARGV, as when it ran alone (the two
-- tables are refilled in place: Redis keeps its globals read-only).
-- Returns each call's reply, in order. A call that answers an error stops
-- the batch there and the error is the answer: the calls before it stay
-- applied (Redis keeps a script's writes), and the store runs the batch
-- again, where their flags make them repeats.

local scripts = {atomic_update = atomic_update, saga_step = saga_step, hold = hold}
local all_keys, all_args = {}, {}
for i = 1, #KEYS do all_keys[i] = KEYS[i] end
for i = 1, #ARGV do all_args[i] = ARGV[i] end

-- Refills `into` with items first .. first + count - 1 of `from`.
local function refill(into, from, first, count)
  for i = #into, 1, -1 do into[i] = nil end
  for i = 1, count do into[i] = from[first + i - 1] end
end

local replies = {}
local key_at, arg_at = 1, 2
for call = 1, tonumber(all_args[1]) do
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
return replies
