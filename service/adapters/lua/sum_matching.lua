-- Sum the counter fields of one partition's hour hashes (one Redis Cluster slot) whose
-- dimension starts with a prefix: what a repeat-drivers request needs, summed where the
-- counters are, so that the worker receives one short reply per partition instead of every
-- field of every hour.
-- KEYS: the hour keys (missing ones are skipped). ARGV[1]: an HSCAN MATCH pattern (the
-- prefix, glob-escaped, then `*`); ARGV[2..]: the counter names wanted (after the last `|`).
-- Returns field, sum, field, sum, ...
local wanted = {}
for i = 2, #ARGV do
  wanted[ARGV[i]] = true
end
local totals = {}
local order = {}
for k = 1, #KEYS do
  local cursor = '0'
  repeat
    local reply = redis.call('HSCAN', KEYS[k], cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
    cursor = reply[1]
    local items = reply[2]
    for i = 1, #items, 2 do
      local field = items[i]
      local name = string.match(field, '|([^|]*)$')
      if name and wanted[name] then
        if totals[field] == nil then
          totals[field] = 0
          order[#order + 1] = field
        end
        totals[field] = totals[field] + tonumber(items[i + 1])
      end
    end
  until cursor == '0'
end
local out = {}
for _, field in ipairs(order) do
  out[#out + 1] = field
  out[#out + 1] = tostring(totals[field])
end
return out
