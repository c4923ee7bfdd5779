-- Sum fields over hour-counter hashes of one partition (one Redis Cluster slot): what an FCR
-- request needs, summed where the counters are, so that a week of hours costs the worker one
-- command and one short reply instead of a reply per hour.
-- KEYS: the hour keys (missing ones count 0). ARGV: the fields. Returns one sum per field.
local totals = {}
for i = 1, #ARGV do
  totals[i] = 0
end
for k = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[k], unpack(ARGV))
  for i = 1, #ARGV do
    local value = values[i]
    if value then
      totals[i] = totals[i] + tonumber(value)
    end
  end
end
return totals
