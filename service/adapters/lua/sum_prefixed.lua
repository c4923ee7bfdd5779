-- Sum the counter fields of one partition's hour hashes (one Redis Cluster slot) whose
-- dimension starts with one of the given prefixes and whose counter is one of the given
-- names: what the repeat-drivers and agents requests need (they do not know the names in
-- advance), summed where the counters are, so that the worker receives one short reply per
-- partition instead of every field of every hour. HSCAN MATCH filters inside Redis.
-- KEYS: the hour keys (missing ones are skipped).
-- ARGV[1]: the number n of prefixes; ARGV[2 .. n+1]: an HSCAN MATCH pattern per prefix (the
-- prefix, glob-escaped, then `*`); ARGV[n+2 ..]: the counter names wanted (after the last `|`).
-- Returns field, sum, field, sum, ... (sums as strings).
local n = tonumber(ARGV[1])
local wanted = {}
for i = n + 2, #ARGV do
  wanted[ARGV[i]] = true
end
local totals = {}
local order = {}
for k = 1, #KEYS do
  local seen = {}  -- a field two patterns match is counted once
  for p = 2, n + 1 do
    local cursor = '0'
    repeat
      local reply = redis.call('HSCAN', KEYS[k], cursor, 'MATCH', ARGV[p], 'COUNT', 1000)
      cursor = reply[1]
      local items = reply[2]
      for i = 1, #items, 2 do
        local field = items[i]
        local name = string.match(field, '|([^|]*)$')
        if name and wanted[name] and not seen[field] then
          seen[field] = true
          if totals[field] == nil then
            totals[field] = 0
            order[#order + 1] = field
          end
          totals[field] = totals[field] + tonumber(items[i + 1])
        end
      end
    until cursor == '0'
  end
end
local out = {}
for _, field in ipairs(order) do
  out[#out + 1] = field
  out[#out + 1] = string.format('%d', totals[field])
end
return out
