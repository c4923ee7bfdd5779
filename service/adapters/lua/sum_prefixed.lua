-- Sum, over hour-counter hashes of one partition (one Redis Cluster slot), every field whose
-- dimension starts with one of the given prefixes and whose counter is one of the given
-- names: what the agents table needs, whose agent names the caller does not know.
-- KEYS: the hour keys (missing ones are skipped).
-- ARGV: the number of prefixes, the prefixes, then the counter names.
-- Returns field, sum, field, sum, ... (sums as strings).
local n = tonumber(ARGV[1])
local prefixes = {}
for i = 2, n + 1 do
  prefixes[#prefixes + 1] = ARGV[i]
end
local wanted = {}
for i = n + 2, #ARGV do
  wanted[ARGV[i]] = true
end
local sums = {}
local order = {}
for k = 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[k])
  for i = 1, #flat, 2 do
    local field = flat[i]
    local name = string.match(field, '|([^|]*)$')
    if name and wanted[name] then
      for p = 1, #prefixes do
        local prefix = prefixes[p]
        if string.sub(field, 1, #prefix) == prefix then
          local have = sums[field]
          if have == nil then
            order[#order + 1] = field
            sums[field] = tonumber(flat[i + 1])
          else
            sums[field] = have + tonumber(flat[i + 1])
          end
          break
        end
      end
    end
  end
end
local out = {}
for _, field in ipairs(order) do
  out[#out + 1] = field
  out[#out + 1] = string.format('%d', sums[field])
end
return out
