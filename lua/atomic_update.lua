-- Apply one transaction atomically: read the processed flag, check the
-- balance, move the money and record the outcome, all in one script.
--
-- Every key is in one slot, the checked account's; KEYS[1..4] and
-- ARGV[1..8] are money.lua's layout, the flag here being the tx record
-- ({tag}:tx:<id>) when it shares the slot, else {tag}:step:<id>:apply (the
-- consumer then copies the outcome into the tx record). Each outcome
-- records its place in the slot's order of applies (KEYS[2]), so an audit
-- (the harness) can replay the log in that order and check each one.
-- KEYS[1] the processed flag, holding the outcome
-- KEYS[2] the slot's apply order         ({tag}:seq)
-- KEYS[3] the checked account           ({tag}:acct:<account>, money.lua):
--         a debit or transfer may take only balance - pending; a credit
--         leaves a refund of what is held room below 2^53-1
-- KEYS[4] history of the checked account ({tag}:hist:<account>)
-- KEYS[5] the destination                ({tag}:acct:<to>), transfers only
-- KEYS[6] history of the destination     ({tag}:hist:<to>), transfers only
-- ARGV[1] kind: debit | credit | transfer
-- ARGV[2] amount in minor units, 1 ..= 2^53-1 (validated before it gets here)
-- ARGV[3] fingerprint of the request (kind|account|to|amount)
-- ARGV[4] seconds to keep the outcome (>= the topic's retention)
-- ARGV[5] the consumer's clock (ms since the epoch), kept as applied_at_ms
--         so the harness can measure accept-to-applied latency
-- ARGV[6..8] id, history to keep, metadata (money.lua's log_tx)
-- ARGV[9] the destination of a transfer ('' for a debit or credit)
-- ARGV[10] the checked account (the destination's counterparty)
-- ARGV[11] the asset the transaction names ('' : none); every account it
--          touches must hold it, and a transfer's two always hold one
--
-- Returns {state, reason, balance_after, duplicate, history entries written, ''} where state is
-- "applied" or "rejected" and duplicate is 1 when an earlier apply had
-- already settled this id (nothing was changed this time).
--
-- The store puts money.lua (digits, account_at, replayed, asset_refusal, pay_refusal,
-- credit_refusal, settle, log_tx) before this file.
-- Each outcome is an entry in the history of each account it touched; a
-- refusal, in the checked account's only (none when it does not exist).

local kind = ARGV[1]
-- Checked before anything is written: an unknown kind changes nothing
-- (never taken for a debit).
if kind ~= 'debit' and kind ~= 'credit' and kind ~= 'transfer' then
  return redis.error_reply('unknown kind ' .. tostring(kind))
end
-- A transfer to its own account would read the record once and write it
-- twice, the second write undoing the first: refused before any write
-- (the API and the wire decoder refuse it first).
if kind == 'transfer' and KEYS[5] == KEYS[3] then
  return redis.error_reply('a transfer to its own account')
end

local earlier = replayed()
if earlier then
  return earlier
end

local amount = tonumber(ARGV[2])
-- The other side of a transfer, named in each side's entry.
local counterparty = ARGV[9]

local source = account_at(KEYS[3])
if not source then
  return settle('rejected', 'unknown_account', '')
end

-- Refused: an entry that changed nothing, then the outcome.
local function refuse(reason)
  log_tx(KEYS[4], kind, ARGV[2], '0', counterparty, 'rejected', reason, digits(source.balance))
  return settle('rejected', reason, '', source.asset)
end

local other = asset_refusal(source, ARGV[11])
if other then
  return refuse(other)
end

if kind == 'credit' then
  local full = credit_refusal(source, amount, nil)
  if full then
    return refuse(full)
  end
  local after = digits(source.balance + amount)
  redis.call('HSET', KEYS[3], 'balance', after)
  log_tx(KEYS[4], kind, ARGV[2], ARGV[2], '', 'applied', '', after)
  return settle('applied', '', after, source.asset)
end

local short = pay_refusal(source, amount)
if short then
  return refuse(short)
end

if kind == 'transfer' then
  local destination = account_at(KEYS[5])
  local unfit = credit_refusal(destination, amount, source.asset)
  if unfit then
    return refuse(unfit)
  end
  local credited = digits(destination.balance + amount)
  redis.call('HSET', KEYS[5], 'balance', credited)
  log_tx(KEYS[6], kind, ARGV[2], ARGV[2], ARGV[10], 'applied', '', credited)
end

local after = digits(source.balance - amount)
redis.call('HSET', KEYS[3], 'balance', after)
log_tx(KEYS[4], kind, ARGV[2], '-' .. ARGV[2], counterparty, 'applied', '', after)
return settle('applied', '', after, source.asset)
