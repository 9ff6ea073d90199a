-- One step of a postings transaction whose accounts are in several Redis
-- Cluster slots: two phases, each step one call in one slot, idempotent on
-- its own flag. The store runs them in a chain through Kafka (see
-- service/src/store/posting_steps.rs):
--
--   reserve  check the postings on this slot's accounts, in order, against
--            the balances their earlier postings left; if every check
--            passes, keep what the postings will take out as `pending` and
--            the room they will bring in as `incoming` (nothing moves yet)
--   commit   every slot reserved: move the money of this slot's accounts,
--            write their history entries, give back the reservation
--   cancel   some slot refused: give back what this slot reserved, if it
--            did; the slot of the failed posting's `from` writes its entry
--
-- A bound check depends only on the account's own moves, so each slot can
-- check its accounts alone. A slot checks a posting's accounts against the
-- asset the posting names only; whether its two accounts hold one asset is
-- decided from every slot's `assets`. Of all slots' refusals and those
-- mismatches, the lowest posting, and at one posting the check a single
-- script makes first, is the refusal a single script would give.
--
-- KEYS[1..4] and ARGV[1..8] are money.lua's layout (ARGV[1] the step,
-- ARGV[2] unused); this slot's accounts are numbered 1..l:
-- KEYS[1 + 2i] this slot's account i's record  ({tag}:acct:<account>)
-- KEYS[2 + 2i] this slot's account i's history ({tag}:hist:<account>)
-- KEYS[3 + 2l] commit and cancel only: this slot's reserve flag
--              ({tag}:step:<id>:reserve)
-- ARGV[9]            m, the number of the transaction's accounts
-- ARGV[9 + a]        account a's name (1..m, in order of first mention)
-- ARGV[10 + m]       l, the number of this slot's accounts (at least 1)
-- ARGV[10 + m + i]   the number (1..m) of this slot's account i
-- ARGV[11 + m + l]   n, the number of postings (at least 1)
-- then for posting j (1..n), at p = 11 + m + l + 4(j - 1):
-- ARGV[p + 1] its `from`'s number, ARGV[p + 2] its `to`'s (1..m), ARGV[p + 3]
-- its amount, ARGV[p + 4] the asset it names ('' : none)
-- ARGV[12 + m + l + 4n] cancel only: the 0-based index of the posting that
--                       failed the transaction ('' otherwise)
-- ARGV[13 + m + l + 4n] cancel only: its reason ('' otherwise)
--
-- Answers with money.lua's settle:
--   reserve  `reserved`, or `refused` with the reason and the 0-based index
--            of the first posting that failed here; both with `assets`: for
--            each posting its `from`'s asset and its `to`'s, comma-separated
--            ('?' where that account is in another slot, '' where it does
--            not exist)
--   commit   `committed` with the balance after of this slot's account 1
--            and its asset
--   cancel   `cancelled`
-- The store puts money.lua before this file.

local step = ARGV[1]
local m = tonumber(ARGV[9])
local l = tonumber(ARGV[10 + m])
local n = tonumber(ARGV[11 + m + l])
local keys_wanted = 2 + 2 * l + (step == 'reserve' and 0 or 1)
-- A call the store did not build is refused before anything is written.
if (step ~= 'reserve' and step ~= 'commit' and step ~= 'cancel') or m < 2 or l < 1 or n < 1
    or #KEYS ~= keys_wanted or #ARGV ~= 13 + m + l + 4 * n then
  return redis.error_reply('posting_step: malformed call')
end

local earlier = replayed()
if earlier then
  return earlier
end

local function name(a) return ARGV[9 + a] end
-- here[a]: this slot's number of account a (nil: in another slot).
local here = {}
for i = 1, l do
  here[tonumber(ARGV[10 + m + i])] = i
end
local postings = {}
for j = 1, n do
  local p = 11 + m + l + 4 * (j - 1)
  postings[j] = {from = tonumber(ARGV[p + 1]), to = tonumber(ARGV[p + 2]),
    amount = tonumber(ARGV[p + 3]), amount_text = ARGV[p + 3], asset = ARGV[p + 4]}
end

local accounts = {}
for i = 1, l do
  accounts[i] = account_at(KEYS[1 + 2 * i])
end
local function local_account(a) return here[a] and accounts[here[a]] end

-- How far each of this slot's accounts goes down and up, from its balance
-- now, as its postings move it in order: what a reservation keeps.
local function reach()
  local now, down, up = {}, {}, {}
  for i = 1, l do now[i], down[i], up[i] = 0, 0, 0 end
  for j = 1, n do
    local posting = postings[j]
    local from, to = here[posting.from], here[posting.to]
    if from then
      now[from] = now[from] - posting.amount
      down[from] = math.max(down[from], -now[from])
    end
    if to then
      now[to] = now[to] + posting.amount
      up[to] = math.max(up[to], now[to])
    end
  end
  return down, up
end

-- Adds `sign` times this slot's reservation to its accounts.
local function reserve(sign)
  local down, up = reach()
  for i = 1, l do
    local account = accounts[i]
    if down[i] ~= 0 or up[i] ~= 0 then
      account.pending = account.pending + sign * down[i]
      account.incoming = account.incoming + sign * up[i]
      -- A reservation given back that is not there: something else wrote
      -- the account. Stop, loudly.
      if account.pending < 0 or account.incoming < 0 then
        return 'posting_step ' .. step .. ': ' .. KEYS[1 + 2 * i] .. ' does not keep its reservation'
      end
    end
  end
  return nil
end

local function write_reservation()
  for i = 1, l do
    redis.call('HSET', KEYS[1 + 2 * i], 'pending', digits(accounts[i].pending),
      'incoming', digits(accounts[i].incoming))
  end
end

if step == 'reserve' then
  -- Each posting's accounts' assets, as this slot sees them.
  local assets = {}
  for j = 1, n do
    for _, a in ipairs({postings[j].from, postings[j].to}) do
      local account = local_account(a)
      assets[#assets + 1] = not here[a] and '?' or (account and account.asset or '')
    end
  end
  assets = table.concat(assets, ',')
  for j = 1, n do
    local posting = postings[j]
    local source, destination = local_account(posting.from), local_account(posting.to)
    local reason
    if here[posting.from] then
      reason = not source and 'unknown_account'
        or asset_refusal(source, posting.asset) or pay_refusal(source, posting.amount)
    end
    if not reason and here[posting.to] then
      -- Against the asset the posting names only: whether its `from`'s
      -- and its `to`'s match is decided from every slot's `assets`, as
      -- for accounts in two slots.
      reason = credit_refusal(destination, posting.amount, posting.asset)
    end
    if reason then
      return settle('refused', reason, '', nil, j - 1, assets)
    end
    if source then source.balance = source.balance - posting.amount end
    if destination then destination.balance = destination.balance + posting.amount end
  end
  local broken = reserve(1)
  if broken then
    return redis.error_reply(broken)
  end
  write_reservation()
  return settle('reserved', '', '', nil, nil, assets)
end

-- commit and cancel follow this slot's reserve (the chain publishes them
-- only after every slot reserved or refused).
local reserved = redis.call('HGET', KEYS[3 + 2 * l], 'state')
if reserved ~= 'reserved' and reserved ~= 'refused' then
  return redis.error_reply('posting_step ' .. step .. ': this slot did not reserve')
end

if step == 'cancel' then
  if reserved == 'reserved' then
    local broken = reserve(-1)
    if broken then
      return redis.error_reply(broken)
    end
    write_reservation()
  end
  local failed = tonumber(ARGV[12 + m + l + 4 * n])
  local posting = postings[failed + 1]
  local source = local_account(posting.from)
  if source then
    log_tx(KEYS[2 + 2 * here[posting.from]], 'postings', posting.amount_text, '0',
      name(posting.to), 'rejected', ARGV[13 + m + l + 4 * n], digits(source.balance), nil, failed)
  end
  return settle('cancelled', '', '', nil, nil, nil)
end

if reserved ~= 'reserved' then
  return redis.error_reply('posting_step commit: this slot refused')
end
local broken = reserve(-1)
if broken then
  return redis.error_reply(broken)
end
for j = 1, n do
  local posting = postings[j]
  local from, to = here[posting.from], here[posting.to]
  if from then
    local source = accounts[from]
    source.balance = source.balance - posting.amount
    log_tx(KEYS[2 + 2 * from], 'postings', posting.amount_text, '-' .. posting.amount_text,
      name(posting.to), 'applied', '', digits(source.balance), nil, j - 1)
  end
  if to then
    local destination = accounts[to]
    destination.balance = destination.balance + posting.amount
    log_tx(KEYS[2 + 2 * to], 'postings', posting.amount_text, posting.amount_text,
      name(posting.from), 'applied', '', digits(destination.balance), nil, j - 1)
  end
end
for i = 1, l do
  redis.call('HSET', KEYS[1 + 2 * i], 'balance', digits(accounts[i].balance),
    'pending', digits(accounts[i].pending), 'incoming', digits(accounts[i].incoming))
end
return settle('committed', '', digits(accounts[1].balance), accounts[1].asset, nil, nil)
