-- What the scripts that move money share: the store puts this file before
-- the apply scripts (atomic_update.lua, saga_step.lua, hold.lua,
-- postings.lua, posting_step.lua, in apply_many.lua), set_balance.lua and
-- put_account.lua (store/scripts.rs).
-- Only definitions: nothing here runs or writes by itself.
--
-- Balances are strings of integers in -(2^53-1) ..= 2^53-1, so tonumber()
-- is exact, and so is Lua's arithmetic on them (doubles hold every
-- integer up to 2^53). Never tostring() a balance: Lua 5.1 prints numbers
-- with 14 significant digits (9007199254740991 -> "9.007199254741e+15");
-- '%d' is exact. A sum of three of them may pass 2^53, where doubles skip
-- odd integers; the checks below only ever compare such a sum against a
-- bound within +-(2^53-1), and rounding keeps order, so a sum past 2^53
-- still compares as past every bound.

local MAX = 9007199254740991

local function digits(n)
  return string.format('%d', n)
end

-- Whether `amount` can be added to `balance` and still leave room below
-- `max` for `held`, the money in flight out of the account that a refund
-- may give back, and what postings in flight reserved to come in (0 where
-- nothing is).
local function has_room(amount, balance, held, max)
  return balance + held + amount <= (max or MAX)
end

-- An account is one record, a hash ({tag}:acct:<account>), read once and
-- written once by each script that moves its money:
--   balance  its balance; the account exists when this field does
--   pending  what its active holds keep, and what postings between slots
--            reserved to take out (absent: 0); only balance - pending -
--            min may leave it
--   held     money in flight out of it: what sagas debited and may still
--            refund (absent: 0; only sagas and captures to another slot,
--            so only on a Redis Cluster, make it other than 0)
--   incoming room kept under `max` for money that postings between slots
--            reserved to bring in (absent: 0; only on a Redis Cluster)
--   asset    what it holds (USD/2, POINTS); money moves only between
--            accounts of one asset
--   min      the lowest balance money leaving may make (absent: 0;
--            below 0: an overdraft)
--   max      the highest balance money coming in may make, counting what
--            is in flight out of it and `incoming` (absent: 2^53-1)
--   meta     its metadata, canonical JSON (absent: none)
--   created  when it was made, ms since the epoch
local function account_at(key)
  local a = redis.call('HMGET', key, 'balance', 'pending', 'held', 'asset', 'min', 'max',
    'incoming')
  if not a[1] then
    return nil
  end
  return {balance = tonumber(a[1]), pending = tonumber(a[2] or '0'),
    held = tonumber(a[3] or '0'), asset = a[4], min = tonumber(a[5] or '0'),
    max = tonumber(a[6] or MAX), incoming = tonumber(a[7] or '0')}
end

-- The scripts that keep a processed flag (atomic_update.lua, saga_step.lua,
-- hold.lua) share one layout, which the functions below read. Every key is
-- in the slot of the account the call runs for ({tag}: see
-- service/src/store/layout.rs), and the account's keys sit at the same
-- index in every script; each script's own keys follow KEYS[4]:
-- KEYS[1] the flag (a hash: state, reason, balance_after, ...)
-- KEYS[2] the slot's apply-order counter ({tag}:seq)
-- KEYS[3] the account                    ({tag}:acct:<account>, above)
-- KEYS[4] the account's history          ({tag}:hist:<account>)
-- ARGV[1] what to do (the script's kind, step or op)
-- ARGV[2] amount in minor units, 1 ..= 2^53-1 (validated before it gets here)
-- ARGV[3] the fingerprint of the transaction
-- ARGV[4] seconds to keep the flag (>= the topic's retention)
-- ARGV[5] the consumer's clock (ms since the epoch)

-- The first run's answer, {state, reason, balance_after, 1, 0, asset,
-- posting, assets}, when the flag is set (nil when not). A repeat still writes (it renews the flag's TTL):
-- a WAIT after it then covers the first run's writes, even through a new
-- connection. A record whose body is not the one its id was applied with
-- is never answered the other's outcome: a 'mismatch' answer, and
-- nothing changes (the consumer sends it to the DLQ).
local function replayed()
  local done = redis.call('HMGET', KEYS[1], 'state', 'reason', 'balance_after', 'fp', 'asset',
    'posting', 'assets')
  if not done[1] then
    return nil
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  if done[4] and done[4] ~= ARGV[3] then
    return {'mismatch', '', '', 1, 0, '', '', ''}
  end
  return {done[1], done[2] or '', done[3] or '', 1, 0, done[5] or '', done[6] or '',
    done[7] or ''}
end

-- Why `account` (account_at's answer) may not pay `amount` (nil when it
-- may): only what holds do not keep may leave it, and only down to its
-- `min`, so a capture always finds the money it holds.
local function pay_refusal(account, amount)
  if account.balance - account.pending - amount < account.min then
    return 'insufficient_funds'
  end
  return nil
end

-- 'asset_mismatch' when `account` (account_at's answer) does not hold
-- `asset`, the asset a transaction names ('' or nil: none named), else nil.
local function asset_refusal(account, asset)
  if asset and asset ~= '' and account.asset ~= asset then
    return 'asset_mismatch'
  end
  return nil
end

-- Why `amount` of `asset` may not be credited to `account` (account_at's
-- answer; nil: no such account), or nil when it may: the assets match,
-- and the balance stays at most `max` with room for every refund of the
-- money in flight out of it and for what postings reserved to come in. Past the default cap, 2^53-1, the reason is
-- `balance_overflow`; past a cap the account was given,
-- `max_balance_exceeded`. `asset` nil or '': none to check.
local function credit_refusal(account, amount, asset)
  if not account then
    return 'unknown_account'
  end
  local other = asset_refusal(account, asset)
  if other then
    return other
  end
  if not has_room(amount, account.balance, account.held + account.incoming, account.max) then
    if account.max == MAX then
      return 'balance_overflow'
    end
    return 'max_balance_exceeded'
  end
  return nil
end

-- History entries this call wrote (`log`), the reply's fifth element.
local entries_written = 0

-- Set the flag to this outcome, in the slot's apply order, and answer it
-- with the history entries written before: {state, reason, balance_after,
-- 0, entries, asset, posting, assets}. `asset` is the asset of the account the
-- call ran for (nil: no such account): kept in the flag, so a repeat
-- answers it too, GET /transactions/{id} and the outcome event show it,
-- and a saga's credit checks the asset its debit answered. `posting`: the
-- 0-based index of the posting that failed a postings transaction (nil:
-- none), kept beside the reason; `assets`: each posting's asset, the
-- asset of its `from` ('' where it does not exist), comma-separated (nil:
-- not postings; a reserve of postings between slots keeps each posting's
-- two accounts' assets instead, see posting_step.lua).
local function settle(state, reason, balance_after, asset, posting, assets)
  local fields = {'state', state, 'reason', reason, 'balance_after', balance_after,
    'fp', ARGV[3], 'applied_at_ms', ARGV[5], 'seq', redis.call('INCR', KEYS[2])}
  if asset then
    fields[#fields + 1] = 'asset'
    fields[#fields + 1] = asset
  end
  if posting then
    fields[#fields + 1] = 'posting'
    fields[#fields + 1] = posting
  end
  if assets then
    fields[#fields + 1] = 'assets'
    fields[#fields + 1] = assets
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {state, reason, balance_after, 0, entries_written, asset or '', posting or '',
    assets or ''}
end

-- The account's history (its statement): a stream in the account's slot,
-- one entry per transaction (or saga step, or hold state) that touched
-- it, ids from Redis's clock, so the entries are in apply order and an
-- entry's time is its id. Every entry has the same fields (a stream then
-- stores their names once per node). `delta` is the account's signed
-- change, `bal` its balance after. Trimmed here, by the writes (every
-- 100th), to what is newer than `keep_ms`, keeping the newest entry older
-- than that: the balance at any time within the retention stays readable. keep_ms 0:
-- no history is kept (a switch for measuring what it costs). An entry of a
-- postings transaction also has `posting`, its posting's index.
local function log(key, keep_ms, id, metadata, kind, amount, delta, counterparty,
                   status, reason, balance_after, hold, posting)
  if keep_ms == '0' then
    return
  end
  local at
  if posting then
    at = redis.call('XADD', key, '*', 'id', id, 'type', kind, 'amount', amount,
      'delta', delta, 'cp', counterparty, 'status', status, 'reason', reason,
      'bal', balance_after, 'hold', hold, 'meta', metadata, 'posting', posting)
  else
    at = redis.call('XADD', key, '*', 'id', id, 'type', kind, 'amount', amount,
      'delta', delta, 'cp', counterparty, 'status', status, 'reason', reason,
      'bal', balance_after, 'hold', hold, 'meta', metadata)
  end
  entries_written = entries_written + 1
  local cutoff = tonumber(string.match(at, '^%d+')) - tonumber(keep_ms)
  -- Looked at every 100th entry (a stream node; XLEN is O(1)): checking
  -- on every write cost Redis about 15-25 us a call more (scripts/script-cost).
  if redis.call('XLEN', key) % 100 ~= 0 then
    return
  end
  -- The oldest entry first: Redis 7.0's XREVRANGE scans the whole stream
  -- when nothing is at or below its end, so it runs only when something
  -- is older than the cutoff.
  local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if tonumber(string.match(oldest[1][1], '^%d+')) < cutoff then
    local older = redis.call('XREVRANGE', key, '(' .. digits(cutoff) .. '-0', '-', 'COUNT', 1)
    -- `~`: whole nodes only (cheap); what stays is at least the retention.
    redis.call('XTRIM', key, 'MINID', '~', older[1][1])
  end
end

-- `log` for the scripts of the flag layout above, which also take
-- ARGV[6] the transaction's id
-- ARGV[7] milliseconds of history to keep (0: none)
-- ARGV[8] the transaction's metadata, canonical JSON ('' when none)
local function log_tx(key, kind, amount, delta, counterparty, status, reason,
                      balance_after, hold, posting)
  log(key, ARGV[7], ARGV[6], ARGV[8], kind, amount, delta, counterparty, status,
    reason, balance_after, hold or '', posting)
end
