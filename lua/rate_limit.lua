-- Rate limit of one API key: GCRA (the generic cell rate algorithm), on
-- Redis's clock, so every API process shares one limit and one clock.
--
-- A function, `rate_limit`: the store runs it alone (KEYS[1], ARGV[1..3]:
-- a read, or a key's count on a cluster) or before `claim` (claim.lua) for
-- the items of each request (claim_batch.lua).
--
-- tat_key   the key's theoretical arrival time (TAT), microseconds, a string
-- interval  emission interval in microseconds (1e6 / rate, rounded up)
-- burst     how many requests may come at once
-- count     how many are asked for at once (1, or the items of a batch)
-- now       Redis's clock in microseconds (clock.lua's `clock_us`, read
--           once per call)
--
-- Returns {allowed, remaining, retry_after_us, reset_us}:
--   allowed         how many of `count` may go ahead (and are counted): the
--                   first `allowed` of them; 0 when none may
--   remaining       how many more requests may come right now
--   retry_after_us  when some were refused: how long until one more may come
--   reset_us        how long until the whole burst is available again
--
-- A request at `now` may go when TAT - now <= (burst - 1) * interval; it
-- moves TAT to max(TAT, now) + interval. So of `count` asked at once, the
-- k-th may go when TAT + (k - 1) * interval - now <= the same tolerance.
-- A refused request changes nothing.
-- The key expires when TAT passes, so an idle key holds no memory.
-- Times stay below 2^53 (seconds since 1970 in microseconds ~ 1.8e15), so
-- doubles hold them exactly; '%d' writes them exactly.

local function rate_limit(tat_key, interval, burst, count, now)
  local tat = tonumber(redis.call('GET', tat_key) or '0')
  if tat < now then
    tat = now
  end
  local tolerance = (burst - 1) * interval
  if tat - now > tolerance then
    return {0, 0, tat - now - tolerance, tat - now}
  end

  local allowed = math.min(count, math.floor((tolerance - (tat - now)) / interval) + 1)
  local new_tat = tat + allowed * interval
  local ttl_ms = math.ceil((new_tat - now) / 1000)
  -- Asking for none counts none and writes nothing (on an idle key the
  -- TAT would not move, and a PX of 0 is an error).
  if allowed > 0 then
    redis.call('SET', tat_key, string.format('%d', new_tat), 'PX', string.format('%d', ttl_ms))
  end
  local remaining = math.floor((burst * interval - (new_tat - now)) / interval)
  local retry_after = 0
  if allowed < count then
    retry_after = new_tat - now - tolerance
  end
  return {allowed, remaining, retry_after, new_tat - now}
end
