-- Redis's clock, read once per script call by the scripts that claim or
-- count (the store puts this file before rate_limit.lua and claim.lua): a
-- call that claims or counts many requests gives them all one instant, as
-- if they came at once, instead of one TIME command each.

-- Microseconds since the epoch; below 2^53, so exact in a double.
local function clock_us()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end
