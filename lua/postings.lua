-- Apply a postings transaction atomically: each posting moves its amount
-- from its `from` to its `to`, in order, checked against the balances the
-- postings before it left; if any fails, nothing moves. Every account is
-- in one slot (on a cluster, postings whose accounts are not go through
-- posting_step.lua, in two phases).
--
-- KEYS[1..4] and ARGV[1..8] are money.lua's layout (ARGV[1] 'postings',
-- ARGV[2] unused); the accounts are numbered 1..m in order of first
-- mention, the first posting's `from` first:
-- KEYS[1 + 2i] account i's record  ({tag}:acct:<account>)
-- KEYS[2 + 2i] account i's history ({tag}:hist:<account>)
-- ARGV[9]          m, the number of accounts (at least 2)
-- ARGV[9 + i]      account i's name (the counterparty in the others' entries)
-- ARGV[10 + m]     n, the number of postings (at least 1)
-- then for posting j (1..n), at p = 10 + m + 4(j - 1):
-- ARGV[p + 1] its `from`'s number, ARGV[p + 2] its `to`'s, ARGV[p + 3]
-- its amount, ARGV[p + 4] the asset it names ('' : none)
--
-- Returns money.lua's settle answer: `applied` with the first `from`'s
-- balance after every posting, or `rejected` with the reason and the
-- 0-based index of the first posting that failed; with each posting's
-- asset (its `from`'s), comma-separated. Each applied posting
-- writes an entry in its `from` (delta -amount) and its `to` (+amount),
-- both with `posting`; a refusal writes one entry (delta 0) in the `from`
-- of the posting that failed (none when that account does not exist).

local m = tonumber(ARGV[9])
local n = tonumber(ARGV[10 + m])
-- A call the store did not build is refused before anything is written.
if m < 2 or n < 1 or #KEYS ~= 2 + 2 * m or #ARGV ~= 10 + m + 4 * n then
  return redis.error_reply('postings: malformed call')
end
local postings = {}
for j = 1, n do
  local p = 10 + m + 4 * (j - 1)
  local from, to = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  -- Money to its own account would be read once and written twice.
  if from == to or from < 1 or to < 1 or from > m or to > m then
    return redis.error_reply('postings: posting ' .. (j - 1) .. ' names accounts badly')
  end
  postings[j] = {from = from, to = to, amount = tonumber(ARGV[p + 3]),
    amount_text = ARGV[p + 3], asset = ARGV[p + 4]}
end

local earlier = replayed()
if earlier then
  return earlier
end

local function record_key(i) return KEYS[1 + 2 * i] end
local function history_key(i) return KEYS[2 + 2 * i] end
local function name(i) return ARGV[9 + i] end

-- Each account as stored, and its balance as the postings so far leave it.
local accounts, stored = {}, {}
for i = 1, m do
  accounts[i] = account_at(record_key(i))
  if accounts[i] then
    stored[i] = accounts[i].balance
  end
end
local first_asset = accounts[1] and accounts[1].asset
-- Each posting's asset, its `from`'s ('' where that does not exist): the
-- outcome names them.
local assets = {}
for j = 1, n do
  local source = accounts[postings[j].from]
  assets[j] = source and source.asset or ''
end
assets = table.concat(assets, ',')

-- Refused at posting j: one entry in its `from` (the balance unchanged),
-- then the outcome naming the posting.
local function refuse(j, reason)
  local posting = postings[j]
  if accounts[posting.from] then
    log_tx(history_key(posting.from), 'postings', posting.amount_text, '0', name(posting.to),
      'rejected', reason, digits(stored[posting.from]), nil, j - 1)
  end
  return settle('rejected', reason, '', first_asset, j - 1, assets)
end

-- Every posting checked, in order, before the first write.
local after = {}
for j = 1, n do
  local posting = postings[j]
  local source, destination = accounts[posting.from], accounts[posting.to]
  if not source then
    return refuse(j, 'unknown_account')
  end
  local reason = asset_refusal(source, posting.asset)
    or pay_refusal(source, posting.amount)
    or credit_refusal(destination, posting.amount, source.asset)
  if reason then
    return refuse(j, reason)
  end
  source.balance = source.balance - posting.amount
  destination.balance = destination.balance + posting.amount
  after[j] = {from = source.balance, to = destination.balance}
end

for i = 1, m do
  if accounts[i].balance ~= stored[i] then
    redis.call('HSET', record_key(i), 'balance', digits(accounts[i].balance))
  end
end
for j = 1, n do
  local posting = postings[j]
  log_tx(history_key(posting.from), 'postings', posting.amount_text, '-' .. posting.amount_text,
    name(posting.to), 'applied', '', digits(after[j].from), nil, j - 1)
  log_tx(history_key(posting.to), 'postings', posting.amount_text, posting.amount_text,
    name(posting.from), 'applied', '', digits(after[j].to), nil, j - 1)
end
return settle('applied', '', digits(accounts[1].balance), first_asset, nil, assets)
