-- Accept every id of a batch that lives in one slot, in one script call:
-- accept.lua's `accept` (the store puts that file before this one) for
-- each, in order, exactly as if each were accepted alone.
--
-- KEYS[i]        tx record hash of the i-th id
-- ARGV[2i - 1]   fingerprint of the i-th published record
-- ARGV[2i]       lease token of the i-th claim
--
-- Returns one verdict (accepted | not_owner | conflict) per key, in order.

local answers = {}
for i, record in ipairs(KEYS) do
  answers[i] = accept(record, ARGV[2 * i - 1], ARGV[2 * i])
end
return answers
