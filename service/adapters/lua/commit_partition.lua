-- Commits one batch of one input partition, atomically: customer states, counter deltas,
-- timers, the partition clock (watermark, applied offsets) and the outbox of outputs.
-- Every key carries the partition's hash tag, so this runs on one Redis Cluster slot.
--
-- KEYS[1] clock hash, KEYS[2] timers sorted set, KEYS[3] outbox list,
-- KEYS[4 .. 3+n] customer state keys, KEYS[4+n ..] counter hour keys, then (when the
-- at-risk work list changes) its hash and its sorted sets by value, score and since.
-- ARGV[1] the clock's seq as read ('' when new): another writer since then -> CONFLICT
-- ARGV[2] n, the number of state keys
-- ARGV[3] idle time-to-live of a state, ms; ARGV[4] time-to-live of a counter key, ms
-- ARGV[5] JSON: {"c": [[key index, field, delta, field, delta, ...], ...] (each key once,
--                each field once per key), "ta": [score, member, ...], "tr": [member, ...],
--                "k": [field, value, ...], "ci": [[field, delta], ...],
--                "w": the committing worker's token, stored as the clock's `w` ('' or absent: none),
--                "ri": index in KEYS of the work list's hash (its three sorted sets follow),
--                "rd": [customer_id, ...] removed from the work list,
--                "rp": [[customer_id, entry JSON, value, score, since], ...] written to it,
--                "li": index in KEYS of the latest contacts' sorted set, "la": [occurred_at,
--                member, ...] added to it, "lb": the score below which they are dropped,
--                "lk": how many of the latest it keeps}
-- ARGV[6 .. 5+n] the new state of each state key ('' deletes it)
-- ARGV[6+n ..] outbox items to append
-- Returns the clock's new seq.
local function call_chunked(cmd, key, items)
  -- unpack() of thousands of values overflows Lua's stack: send them a thousand at a time.
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
local seq = redis.call('HGET', KEYS[1], 'seq') or ''
if seq ~= ARGV[1] then
  return redis.error_reply('CONFLICT partition written by another worker')
end
local n = tonumber(ARGV[2])
local state_ttl = ARGV[3]
local counter_ttl = ARGV[4]
local ops = cjson.decode(ARGV[5])
for i = 1, n do
  local value = ARGV[5 + i]
  if value == '' then
    redis.call('DEL', KEYS[3 + i])
  else
    redis.call('SET', KEYS[3 + i], value, 'PX', state_ttl)
  end
end
-- Counters: each key's fields read at once, added to, and written at once (HINCRBY per field
-- would cost a call from Lua each, most of this script's time; counters stay far below 2^53).
for _, c in ipairs(ops['c']) do
  local fields = {}
  for j = 2, #c, 2 do
    fields[#fields + 1] = c[j]
  end
  local sums = {}
  for i = 1, #fields, 1000 do
    local last = math.min(i + 999, #fields)
    local current = redis.call('HMGET', KEYS[c[1]], unpack(fields, i, last))
    for j = i, last do
      local total = (tonumber(current[j - i + 1]) or 0) + c[2 * j + 1]
      sums[#sums + 1] = fields[j]
      sums[#sums + 1] = string.format('%d', total)
    end
  end
  call_chunked('HSET', KEYS[c[1]], sums)
  redis.call('PEXPIRE', KEYS[c[1]], counter_ttl)
end
call_chunked('ZADD', KEYS[2], ops['ta'])
call_chunked('ZREM', KEYS[2], ops['tr'])
call_chunked('HSET', KEYS[1], ops['k'])
for _, c in ipairs(ops['ci']) do
  redis.call('HINCRBY', KEYS[1], c[1], string.format('%d', c[2]))
end
local ri = ops['ri']
if ri then
  for _, id in ipairs(ops['rd']) do
    redis.call('HDEL', KEYS[ri], id)
    for k = 1, 3 do redis.call('ZREM', KEYS[ri + k], id) end
  end
  for _, r in ipairs(ops['rp']) do
    redis.call('HSET', KEYS[ri], r[1], r[2])
    for k = 1, 3 do redis.call('ZADD', KEYS[ri + k], r[2 + k], r[1]) end
  end
end
local li = ops['li']
if li then
  call_chunked('ZADD', KEYS[li], ops['la'])
  redis.call('ZREMRANGEBYSCORE', KEYS[li], '-inf', ops['lb'])
  redis.call('ZREMRANGEBYRANK', KEYS[li], 0, -1 - ops['lk'])
  redis.call('PEXPIRE', KEYS[li], counter_ttl)
end
local new_seq = tostring((tonumber(seq) or 0) + 1)
-- `w` names who wrote this seq; every commit sets it, so a worker's token on the clock proves
-- that the worker's own commit was the last one (its states in memory are what Redis holds).
redis.call('HSET', KEYS[1], 'seq', new_seq, 'w', ops['w'] or '')
local outbox = {}
for i = 6 + n, #ARGV do
  outbox[#outbox + 1] = ARGV[i]
end
call_chunked('RPUSH', KEYS[3], outbox)
return new_seq
