-- wrk script for txengine: POST /transactions with unique ids and the same
-- mix as the goose runner (60% transfers, 25% debits, 15% credits); with a
-- batch size above 1, POST /transactions/batch with that many items.
--
--   TXENGINE_API_KEY=txk_... wrk -t2 -c200 -d20s --latency -s harness/wrk/post.lua http://127.0.0.1:8080 -- <run> <accounts> [batch]
--
-- The API key comes from the environment (`harness up` prints it), so that
-- the process list does not show it.
--
-- The movement is a pure function of (thread, counter), mirrored by
-- `harness::wrk::movement_for`, so the harness can rebuild the ledger of a
-- run from the ids it finds in Redis and check the invariants.

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  run = args[1] or "wrk"
  accounts = tonumber(args[2] or "1000")
  batch = tonumber(args[3] or "1")
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local key = os.getenv("TXENGINE_API_KEY")
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end

-- Keep in step with movement_for() in harness/src/wrk.rs.
function movement(thread_id, n)
  local x = (n * 2654435761 + thread_id * 40503) % 4294967296
  local from = x % accounts
  local roll = math.floor(x / accounts) % 100
  local amount = 1 + math.floor(x / 13) % 1000
  local kind, to = "credit", nil
  if roll < 60 then
    kind = "transfer"
    to = (from + 1 + math.floor(x / 7) % (accounts - 1)) % accounts
  elseif roll < 85 then
    kind = "debit"
  end
  return kind, from, to, amount
end

-- The JSON of transaction n of this thread (the next counter value).
function next_transaction()
  local n = counter
  counter = counter + 1
  local kind, from, to, amount = movement(tid, n)
  if to then
    return string.format('{"id":"%s-%d-%d","type":"%s","account":"acct-%d","to":"acct-%d","amount":%d}',
      run, tid, n, kind, from, to, amount)
  end
  return string.format('{"id":"%s-%d-%d","type":"%s","account":"acct-%d","amount":%d}',
    run, tid, n, kind, from, amount)
end

function request()
  if batch <= 1 then
    return wrk.format(nil, "/transactions", nil, next_transaction())
  end
  local items = {}
  for i = 1, batch do
    items[i] = next_transaction()
  end
  local body = '{"transactions":[' .. table.concat(items, ",") .. ']}'
  return wrk.format(nil, "/transactions/batch", nil, body)
end
