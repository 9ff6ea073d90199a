-- One step of a saga: a transfer whose two accounts live in different Redis
-- Cluster slots. Each step runs in one account's slot and is idempotent on
-- its own flag, so a redelivered step changes nothing twice.
--
--   debit   (source slot)       take the amount, hold it as money in flight
--   credit  (destination slot)  add it, or refuse (unknown account, overflow)
--   release (source slot)       the credit happened: the money has landed
--   refund  (source slot)       the credit was refused: give the money back
--
-- KEYS[1..6] and ARGV[1..8] are money.lua's layout:
-- KEYS[1] the step's flag          ({tag}:step:<id>:<step>)
-- KEYS[2] the slot's apply order   ({tag}:seq)
-- KEYS[3] the account's balance    ({tag}:bal:<account>)
-- KEYS[4] money held on the account by holds ({tag}:pending:<account>):
--         the debit may take only balance - pending
-- KEYS[5] the account's history          ({tag}:hist:<account>)
-- KEYS[6] money in flight out of the account ({tag}:held:<account>): the
--         debit adds to it, the release and the refund take it back
-- KEYS[7] settle of a capture's saga only: the hold ({tag}:hold:<id>),
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
--
-- Each step that finds its account is an entry in that account's history,
-- named by what it did (debited, credited, released, refunded; a refused
-- debit `rejected`); a refused credit changed nothing of an account that
-- may not exist, and writes none.
--
-- Returns {state, reason, balance_after, duplicate, entries written}: state is the step's
-- name in the past tense (debited, credited, released, refunded) when it
-- moved money, `rejected` when the debit is refused (the saga ends there)
-- or `refused` when the credit is (a refund follows). duplicate is 1 when
-- the flag was set already (nothing changed this time).
--
-- The store puts money.lua (digits, has_room, replayed, pay_refusal,
-- credit_refusal, settle, log_tx) before this file.

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
  log_tx(KEYS[5], ARGV[10], ARGV[2], delta, ARGV[9], status, reason or '', after, ARGV[11])
end

if step == 'debit' then
  local source = redis.call('GET', KEYS[3])
  if not source then
    return settle('rejected', 'unknown_account', '')
  end
  local short = pay_refusal(tonumber(source), amount)
  if short then
    entry('rejected', '0', source, short)
    return settle('rejected', short, '')
  end
  redis.call('INCRBY', KEYS[6], ARGV[2])
  local after = digits(redis.call('DECRBY', KEYS[3], ARGV[2]))
  entry('debited', '-' .. ARGV[2], after)
  return settle('debited', '', after)
end

if step == 'credit' then
  local unfit = credit_refusal(redis.call('GET', KEYS[3]), KEYS[6], amount)
  if unfit then
    return settle('refused', unfit, '')
  end
  local after = digits(redis.call('INCRBY', KEYS[3], ARGV[2]))
  entry('credited', ARGV[2], after)
  return settle('credited', '', after)
end

-- release and refund end the hold the debit made; the debit ran in this
-- slot before them (the consumer publishes them only after it), so the
-- hold is there, unless something else wrote these keys: then stop, loudly.
local held = tonumber(redis.call('GET', KEYS[6]) or '0')
if held < amount then
  return redis.error_reply('saga ' .. step .. ': held ' .. held .. ' < ' .. ARGV[2])
end
if KEYS[7] and redis.call('HGET', KEYS[7], 'state') ~= 'capturing' then
  return redis.error_reply('saga ' .. step .. ': its hold is not capturing')
end
-- No balance may pass 2^53-1, not even by a refund (credits and the admin
-- setter leave room for what is held, so this stops only a foreign write).
if step == 'refund' and not has_room(amount, tonumber(redis.call('GET', KEYS[3]) or '0'), 0) then
  return redis.error_reply('saga refund would pass 2^53-1')
end
if redis.call('DECRBY', KEYS[6], ARGV[2]) == 0 then
  redis.call('DEL', KEYS[6])
end
if KEYS[7] then
  redis.call('HSET', KEYS[7], 'state', step == 'release' and 'captured' or 'voided')
  redis.call('EXPIRE', KEYS[7], ARGV[4])
end
if step == 'release' then
  local balance = digits(tonumber(redis.call('GET', KEYS[3]) or '0'))
  entry('released', '0', balance)
  return settle('released', '', balance)
end
local after = digits(redis.call('INCRBY', KEYS[3], ARGV[2]))
entry('refunded', ARGV[2], after)
return settle('refunded', '', after)
