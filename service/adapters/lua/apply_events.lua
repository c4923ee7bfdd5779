-- Applies a batch of validated events of one input partition, atomically.
-- All keys share the partition's hash tag, so the script runs on one Redis Cluster slot.
--
-- KEYS[1]   hash  <prefix>:{p<N>}:applied   field: topic -> events applied
-- KEYS[2]   hash  <prefix>:{p<N>}:offsets   field: topic -> highest offset applied
-- KEYS[3..] string <prefix>:{p<N>}:seen:<event_id>, one per event
-- ARGV[1]   seconds an event id is remembered
-- ARGV[2]   number of (topic, offset) pairs that follow
-- then      the pairs; then one topic per event, in KEYS order from KEYS[3]
-- Returns   one flag per event: 1 applied now, 0 seen before (a duplicate).
local ttl = tonumber(ARGV[1])
local pairs_count = tonumber(ARGV[2])
for i = 1, pairs_count do
  local topic = ARGV[2 + 2 * i - 1]
  local offset = tonumber(ARGV[2 + 2 * i])
  local current = tonumber(redis.call('HGET', KEYS[2], topic) or '-1')
  if offset > current then
    redis.call('HSET', KEYS[2], topic, offset)
  end
end
local first_topic = 3 + 2 * pairs_count
local flags = {}
for i = 3, #KEYS do
  local topic = ARGV[first_topic + i - 3]
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', KEYS[1], topic, 1)
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
return flags
