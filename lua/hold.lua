-- Holds (two-phase): reserve money, then capture it (in part or whole),
-- void it, or let it expire. Every key is in the slot of the hold's
-- account. A hold ends once: the first of capture, void and expiry to be
-- applied wins; whatever comes after finds it ended.
--
--   hold         check the available balance (balance - pending), raise
--                pending, write the hold and its deadline (Redis's clock)
--   capture      end it: take `amount` (at most what it holds) from the
--                balance, to `to` when the hold names one in this slot,
--                and release all it held from pending
--   capture_out  the same, but `to` is in another slot: the amount becomes
--                money in flight (as a saga's debit) and the saga credits
--                `to`, then releases or refunds (saga_step.lua)
--   void         end it: release all it held
--   expire       the expirer's void of a due hold (no flag of its own: the
--                hold's state is its flag)
-- A capture or void that comes after the deadline first expires the hold.
--
-- KEYS[1..4] and ARGV[1..8] are money.lua's layout:
-- KEYS[1] the flag of this transaction (its tx record, or a step flag in
--         the account's slot); the hold hash itself for expire
-- KEYS[2] the slot's apply order          ({tag}:seq)
-- KEYS[3] the account                     ({tag}:acct:<account>, money.lua):
--         a hold raises its `pending`, its end lowers it; capture_out
--         adds what it takes to `held` (money in flight)
-- KEYS[4] the account's history           ({tag}:hist:<account>)
-- KEYS[5] the hold                        ({tag}:hold:<hold id>): hash of
--         state held|capturing|captured|voided|expired|rejected, amount,
--         to, deadline_ms, and once ended captured, ended_ms (Redis's
--         clock) and ended_seq (the slot's apply order)
-- KEYS[6] the slot's due holds            ({tag}:holds_due): sorted set of
--         ARGV[9] by when the expirer should next look at them
-- KEYS[7] capture to `to` (in this slot) only: `to` ({tag}:acct:<to>),
--         of the account's asset; a credit stays at most its `max` with
--         room for every refund of its money in flight
-- KEYS[8] the same: `to`'s history
-- ARGV[1] hold | capture | capture_out | void | expire
-- ARGV[2] amount: held (hold, void, expire) or captured (capture)
-- ARGV[3..5] fingerprint, seconds to keep flags, consumer clock (money.lua)
-- ARGV[6..8] id, history to keep, metadata (money.lua's log_tx)
-- ARGV[9] the hold's member of the due set: "<account>|<hold id>"
-- ARGV[10] hold: its timeout in ms
-- ARGV[11] hold, capture: the hold's `to` ('' when none)
-- ARGV[12] the hold's id
-- ARGV[13] the account (`to`'s counterparty in a capture's entry)
-- ARGV[14] the asset the transaction names ('' : none; the expirer's
--          expiry never names one); the account, and a capture's `to`,
--          must hold it
--
-- Each change is an entry in the account's history (and a capture's in
-- `to`'s): `held`, `captured` (or `capturing` when a saga goes on),
-- `voided`, `expired` (its id the hold's, also when a late capture or void
-- expires it first), and `rejected` for one refused, when the account
-- exists.
--
-- Returns {state, reason, balance_after, duplicate, entries, asset} as
-- saga_step.lua; capture_out answers `debited` (a saga goes on) and the
-- account's asset; expire answers
-- `expired`, or `ended` (the reason: the state it ended in; the due
-- member removed) / `not_due`, with duplicate 1 (nothing else changed).
--
-- The store puts money.lua (digits, account_at, replayed, asset_refusal, pay_refusal,
-- credit_refusal, settle, log, log_tx) and clock.lua before this file.

local op = ARGV[1]
local ops = {hold = true, capture = true, capture_out = true, void = true, expire = true}
-- Checked before anything is written: an unknown op changes nothing.
if not ops[op] then
  return redis.error_reply('unknown hold op ' .. tostring(op))
end
-- A capture to the hold's own account would write its record twice, the
-- second write undoing the first: refused before any write (the API and
-- the wire decoder refuse such a hold first).
if KEYS[7] and KEYS[7] == KEYS[3] then
  return redis.error_reply('a capture to its own account')
end

local now_ms = math.floor(clock_us() / 1000)
local amount = tonumber(ARGV[2])
-- The account as read once here; the writes below keep it current, so
-- each entry reads its balance after.
local account = account_at(KEYS[3])

local function balance()
  return account and account.balance or 0
end

-- End the active hold `h` (its HMGET below) in `state`, releasing what it
-- held from pending; `captured` is what leaves the balance (0 if none),
-- `in_flight` whether it leaves as money in flight (a saga's debit). The
-- account is written here, once.
local function end_hold(h, state, captured, in_flight)
  -- Checked before anything is written (an error does not undo writes).
  if not account or account.pending < h[2] then
    return redis.error_reply('pending ' .. (account and account.pending or 'none') .. ' < held ' .. h[2] .. ' on ' .. KEYS[3])
  end
  account.pending = account.pending - h[2]
  account.balance = account.balance - captured
  if in_flight then
    account.held = account.held + captured
  end
  redis.call('HSET', KEYS[3], 'balance', digits(account.balance),
    'pending', digits(account.pending), 'held', digits(account.held))
  redis.call('HSET', KEYS[5], 'state', state, 'captured', digits(captured),
    'ended_ms', digits(now_ms), 'ended_seq', redis.call('INCR', KEYS[2]))
  redis.call('EXPIRE', KEYS[5], ARGV[4])
  redis.call('ZREM', KEYS[6], ARGV[9])
  return nil
end

-- This transaction's entry in the account's history.
local function entry(status, delta, reason)
  log_tx(KEYS[4], op == 'capture_out' and 'capture' or op, ARGV[2], delta, ARGV[11],
    status, reason or '', digits(balance()), ARGV[12])
end

-- The expiry's entry, also when a late capture or void finds it due.
local function expired_entry(h)
  log(KEYS[4], ARGV[7], ARGV[12], '', 'expire', digits(h[2]), '0', h[3] or '', 'expired', '',
    digits(balance()), ARGV[12])
end

-- Refused: changes nothing; an entry when the account exists.
local function refuse(reason)
  if account then
    entry('rejected', '0', reason)
  end
  return settle('rejected', reason, '', account and account.asset)
end

-- state, amount, to, deadline_ms
local h = redis.call('HMGET', KEYS[5], 'state', 'amount', 'to', 'deadline_ms')
if h[2] then
  h[2] = tonumber(h[2])
end
local active = h[1] == 'held'

if op == 'expire' then
  if h[1] ~= 'held' then
    -- Ended (how: the reason); a late capture or void that expired it
    -- left its member due for this record (its outcome event).
    redis.call('ZREM', KEYS[6], ARGV[9]) -- due no more
    return {'ended', h[1] or '', '', 1, 0, '', '', ''}
  end
  if now_ms < tonumber(h[4]) then
    return {'not_due', '', '', 1, 0, '', '', ''}
  end
  local failed = end_hold(h, 'expired', 0, false)
  if failed then
    return failed
  end
  expired_entry(h)
  return {'expired', '', digits(balance()), 0, entries_written, '', '', ''}
end

local earlier = replayed()
if earlier then
  return earlier
end

if op == 'hold' then
  if h[1] == 'held' or h[1] == 'capturing' then
    -- Its own flag is unset but the hold is active: a foreign write (an
    -- active hold's flag outlives it: the longest hold is half the TTL).
    return redis.error_reply('hold ' .. ARGV[9] .. ' is active without its flag')
  end
  if h[1] then
    -- An ended hold of this id whose flag expired: the id was reused.
    redis.call('DEL', KEYS[5])
  end
  local refuse_hold = function(reason)
    redis.call('HSET', KEYS[5], 'state', 'rejected', 'amount', ARGV[2], 'to', ARGV[11])
    redis.call('EXPIRE', KEYS[5], ARGV[4])
    return refuse(reason)
  end
  if not account then
    return refuse_hold('unknown_account')
  end
  local short = asset_refusal(account, ARGV[14]) or pay_refusal(account, amount)
  if short then
    return refuse_hold(short)
  end
  redis.call('HSET', KEYS[3], 'pending', digits(account.pending + amount))
  local deadline = now_ms + tonumber(ARGV[10])
  redis.call('HSET', KEYS[5], 'state', 'held', 'amount', ARGV[2], 'to', ARGV[11],
    'deadline_ms', digits(deadline))
  redis.call('EXPIRE', KEYS[5], ARGV[4])
  redis.call('ZADD', KEYS[6], deadline, ARGV[9])
  entry('held', '0')
  return settle('applied', '', digits(account.balance), account.asset)
end

-- capture, capture_out, void: of a hold that exists and is held.
if not h[1] then
  return refuse('unknown_hold')
end
if active and now_ms >= tonumber(h[4]) then
  local failed = end_hold(h, 'expired', 0, false)
  if failed then
    return failed
  end
  expired_entry(h)
  -- Due again at once: the expirer publishes the expiry, whose apply finds
  -- the hold expired and publishes its outcome event.
  redis.call('ZADD', KEYS[6], now_ms, ARGV[9])
  active = false
end
if not active then
  return refuse('hold_not_active')
end
local other = asset_refusal(account, ARGV[14])
if other then
  return refuse(other)
end

if op == 'void' then
  local failed = end_hold(h, 'voided', 0, false)
  if failed then
    return failed
  end
  entry('voided', '0')
  return settle('applied', '', digits(balance()), account.asset)
end

-- The record was routed by the hold's terms as its binding names them;
-- a hold that says otherwise was written by something else: stop, loudly.
if (h[3] or '') ~= ARGV[11] then
  return redis.error_reply('hold ' .. ARGV[9] .. ' is for `' .. (h[3] or '') .. '`, the capture for `' .. ARGV[11] .. '`')
end
if amount > h[2] then
  return refuse('exceeds_hold')
end
-- Holds keep balance - pending >= min (every debit and the setter check
-- it), so the money is there; if it is not, something else wrote: stop,
-- loudly, before any write.
if not account or account.balance - amount < account.min then
  return redis.error_reply('hold ' .. ARGV[9] .. ': the balance is below what it holds')
end

if op == 'capture_out' then
  -- As a saga's debit: the amount leaves the balance and is in flight
  -- until the credit lands (release) or is refused (refund).
  local failed = end_hold(h, 'capturing', amount, true)
  if failed then
    return failed
  end
  entry('capturing', '-' .. ARGV[2])
  return settle('debited', '', digits(account.balance), account.asset)
end

local destination = nil
if ARGV[11] ~= '' then
  destination = account_at(KEYS[7])
  local unfit = credit_refusal(destination, amount, account.asset)
  if unfit then
    return refuse(unfit)
  end
end
-- Ended first: end_hold may refuse, and nothing may be written before.
local failed = end_hold(h, 'captured', amount, false)
if failed then
  return failed
end
if destination then
  local credited = digits(destination.balance + amount)
  redis.call('HSET', KEYS[7], 'balance', credited)
  log_tx(KEYS[8], 'capture', ARGV[2], ARGV[2], ARGV[13], 'captured', '', credited, ARGV[12])
end
entry('captured', '-' .. ARGV[2])
return settle('applied', '', digits(account.balance), account.asset)
