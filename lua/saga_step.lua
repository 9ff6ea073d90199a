-- One step of a saga: a transfer whose two accounts live in different Redis
-- Cluster slots. Each step runs in one account's slot and is idempotent on
-- its own flag, so a redelivered step changes nothing twice.
--
--   debit   (source slot)       take the amount, hold it as money in flight
--   credit  (destination slot)  add it, or refuse (unknown account, overflow)
--   release (source slot)       the credit happened: the money has landed
--   refund  (source slot)       the credit was refused: give the money back
--
-- KEYS[1..4] and ARGV[1..8] are money.lua's layout:
-- KEYS[1] the step's flag          ({tag}:step:<id>:<step>)
-- KEYS[2] the slot's apply order   ({tag}:seq)
-- KEYS[3] the account              ({tag}:acct:<account>, money.lua): the
--         debit may take only balance - pending and adds what it takes to
--         `held` (money in flight), the release and the refund take it back
-- KEYS[4] the account's history    ({tag}:hist:<account>)
-- KEYS[5] settle of a capture's saga only: the hold ({tag}:hold:<id>),
--         `capturing` until now, then captured (release) or voided (refund:
--         the money is back and the hold is gone)
-- ARGV[1] step: debit | credit | release | refund
-- ARGV[2] amount in minor units, 1 ..= 2^53-1
-- ARGV[3] fingerprint of the transaction
-- ARGV[4] seconds to keep the flag (>= the topic's retention)
-- ARGV[5] the consumer's clock (ms since the epoch)
-- ARGV[6..8] id, history to keep, metadata (money.lua's log_tx)
-- ARGV[9] the other account of the saga (the entry's counterparty)
-- ARGV[10] the transaction's kind: transfer | capture
-- ARGV[11] a capture's hold ('' for a transfer)
-- ARGV[12] the asset the money must be of ('' : none named): a debit's,
--          the transaction's; a credit's, the one its debit answered (a
--          step of an earlier version: the transaction's, or none)
--
-- Each step that finds its account is an entry in that account's history,
-- named by what it did (debited, credited, released, refunded; a refused
-- debit `rejected`); a refused credit changed nothing of an account that
-- may not exist, and writes none.
--
-- Returns {state, reason, balance_after, duplicate, entries written, asset}
-- (the asset: the account's, '' when it does not exist): state is the step's
-- name in the past tense (debited, credited, released, refunded) when it
-- moved money, `rejected` when the debit is refused (the saga ends there)
-- or `refused` when the credit is (a refund follows). duplicate is 1 when
-- the flag was set already (nothing changed this time).
--
-- The store puts money.lua (digits, has_room, account_at, replayed,
-- asset_refusal, pay_refusal, credit_refusal, settle, log_tx) before this file.

local step = ARGV[1]
local steps = {debit = true, credit = true, release = true, refund = true}
-- Checked before anything is written: an unknown step changes nothing.
if not steps[step] then
  return redis.error_reply('unknown saga step ' .. tostring(step))
end

local earlier = replayed()
if earlier then
  return earlier
end

local amount = tonumber(ARGV[2])

-- This step's entry: what it moved (`delta`) and the balance after.
local function entry(status, delta, after, reason)
  log_tx(KEYS[4], ARGV[10], ARGV[2], delta, ARGV[9], status, reason or '', after, ARGV[11])
end

local account = account_at(KEYS[3])

if step == 'debit' then
  if not account then
    return settle('rejected', 'unknown_account', '')
  end
  local short = asset_refusal(account, ARGV[12]) or pay_refusal(account, amount)
  if short then
    entry('rejected', '0', digits(account.balance), short)
    return settle('rejected', short, '', account.asset)
  end
  local after = digits(account.balance - amount)
  redis.call('HSET', KEYS[3], 'balance', after, 'held', digits(account.held + amount))
  entry('debited', '-' .. ARGV[2], after)
  return settle('debited', '', after, account.asset)
end

if step == 'credit' then
  local unfit = credit_refusal(account, amount, ARGV[12])
  if unfit then
    return settle('refused', unfit, '', account and account.asset)
  end
  local after = digits(account.balance + amount)
  redis.call('HSET', KEYS[3], 'balance', after)
  entry('credited', ARGV[2], after)
  return settle('credited', '', after, account.asset)
end

-- release and refund end the hold the debit made; the debit ran in this
-- slot before them (the consumer publishes them only after it), so the
-- money is in flight, unless something else wrote this account: then
-- stop, loudly.
if not account or account.held < amount then
  return redis.error_reply('saga ' .. step .. ': held ' .. (account and account.held or 'nothing') .. ' < ' .. ARGV[2])
end
if KEYS[5] and redis.call('HGET', KEYS[5], 'state') ~= 'capturing' then
  return redis.error_reply('saga ' .. step .. ': its hold is not capturing')
end
-- No balance may pass its `max`, not even by a refund (credits, the admin
-- setter and a change of bounds leave room for what is held, so this
-- stops only a foreign write).
if step == 'refund' and not has_room(amount, account.balance, 0, account.max) then
  return redis.error_reply('saga refund would pass the account\'s max')
end
if KEYS[5] then
  redis.call('HSET', KEYS[5], 'state', step == 'release' and 'captured' or 'voided')
  redis.call('EXPIRE', KEYS[5], ARGV[4])
end
local held = digits(account.held - amount)
if step == 'release' then
  redis.call('HSET', KEYS[3], 'held', held)
  local balance = digits(account.balance)
  entry('released', '0', balance)
  return settle('released', '', balance, account.asset)
end
local after = digits(account.balance + amount)
redis.call('HSET', KEYS[3], 'balance', after, 'held', held)
entry('refunded', ARGV[2], after)
return settle('refunded', '', after, account.asset)
