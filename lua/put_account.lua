-- Make an account, or change its bounds and metadata (the admin's
-- PUT /accounts/{account}). Every rule is checked before the first write:
-- a refused change writes nothing, and one that changes nothing writes
-- nothing either.
--
-- KEYS[1] the account ({tag}:acct:<account>, money.lua)
-- ARGV[1] its asset ('' : unchanged; on a new account, ARGV[5])
-- ARGV[2] its min     ('' : unchanged; on a new account, 0)
-- ARGV[3] its max     ('' : unchanged; on a new account, 2^53-1)
-- ARGV[4] its metadata as canonical JSON; '-': unchanged ('' : none)
-- ARGV[5] the default asset
-- ARGV[6] now, ms since the epoch (a new account's `created`)
--
-- Bounds and amounts are validated before they get here (integers within
-- +-(2^53-1), an asset of the pattern).
--
-- Returns {answer, detail, balance, pending, held, asset, min, max, meta,
-- created}: the account as it stands after the call, answer one of
--   created    made, balance 0
--   updated    changed
--   unchanged  exists as asked already: nothing written
--   asset      refused: the account holds another asset (detail: it)
--   crossed    refused: min above max
--   below_min  refused: balance - pending would be below min
--   above_max  refused: balance + held (+ incoming) would be above max

-- The store puts money.lua (MAX, digits) before this file.

local a = redis.call('HMGET', KEYS[1], 'balance', 'pending', 'held', 'asset', 'min', 'max',
  'meta', 'created', 'incoming')
local made = not a[1]
local old = {asset = a[4] or ARGV[5], min = a[5] or '0', max = a[6] or digits(MAX),
  meta = a[7] or '', created = a[8] or ARGV[6]}
local new = {
  asset = ARGV[1] ~= '' and ARGV[1] or old.asset,
  min = ARGV[2] ~= '' and ARGV[2] or old.min,
  max = ARGV[3] ~= '' and ARGV[3] or old.max,
  meta = ARGV[4] ~= '-' and ARGV[4] or old.meta,
  created = old.created,
}
local balance = tonumber(a[1] or '0')
local pending = tonumber(a[2] or '0')
local held = tonumber(a[3] or '0')
-- Room postings in flight reserved to come in: kept, like `held`.
local incoming = tonumber(a[9] or '0')

local function answer(code, detail, fields)
  return {code, detail or '', digits(balance), digits(pending), digits(held), fields.asset,
    fields.min, fields.max, fields.meta, fields.created}
end

if not made and new.asset ~= old.asset then
  return answer('asset', old.asset, old)
end
local min, max = tonumber(new.min), tonumber(new.max)
if min > max then
  return answer('crossed', '', old)
end
if balance - pending < min then
  return answer('below_min', '', old)
end
if balance + held + incoming > max then
  return answer('above_max', '', old)
end
if made then
  redis.call('HSET', KEYS[1], 'balance', '0', 'asset', new.asset, 'min', new.min,
    'max', new.max, 'created', new.created)
  if new.meta ~= '' then
    redis.call('HSET', KEYS[1], 'meta', new.meta)
  end
  return answer('created', '', new)
end
if new.min == old.min and new.max == old.max and new.meta == old.meta then
  return answer('unchanged', '', old)
end
redis.call('HSET', KEYS[1], 'min', new.min, 'max', new.max, 'meta', new.meta)
return answer('updated', '', new)
