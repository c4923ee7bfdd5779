-- Erases customers from one input partition of one policy version, atomically: their states,
-- timers and unpublished outputs, with the partition clock moved on so that every worker's
-- states in memory for the partition are no longer trusted and a batch read before this
-- conflicts (and is read again, with the suppression list of erasure `generation`).
-- Every key carries the partition's hash tag, so this runs on one Redis Cluster slot.
--
-- KEYS[1] clock hash, KEYS[2] timers sorted set, KEYS[3] outbox list,
-- KEYS[4 .. 3+n] the customers' state keys; KEYS[4+n .. 7+n] (when given) the at-risk work
-- list's hash and its three sorted sets, which the customers leave; KEYS[8+n] (when given)
-- the latest contacts' sorted set, which their contacts leave.
-- ARGV[1] the erasure generation; ARGV[2] n; ARGV[3 .. 2+n] the customer ids;
-- ARGV[3+n ..] contact ids of theirs already known (from the contact views).
-- Unpublished outputs of theirs are replaced by a no-op item (the outbox keeps its length:
-- a worker publishing it trims it by count). When anything of theirs was here, a tombstone
-- item for each of their contacts is appended, so that it is published after any output of
-- theirs a worker had in hand.
-- Returns {states, timers, outputs, contact ids found in states and outputs ...}.
local n = tonumber(ARGV[2])
local ids = {}
for i = 1, n do ids[ARGV[2 + i]] = true end
local contacts, found = {}, {}
local function add(c)
  if type(c) == 'string' and not contacts[c] then
    contacts[c] = true
    found[#found + 1] = c
  end
end
local known = {}
for i = 3 + n, #ARGV do known[#known + 1] = ARGV[i] end
local states, timers, outputs = 0, 0, 0
local deltas = {}
local function dec(name, by)
  if type(by) == 'number' and by ~= 0 then deltas[name] = (deltas[name] or 0) - by end
end
for i = 1, n do
  local raw = redis.call('GET', KEYS[3 + i])
  if raw then
    local ok, st = pcall(cjson.decode, raw)
    if ok and type(st) == 'table' then
      for _, name in ipairs({'c', 't', 's'}) do
        if type(st[name]) == 'table' then
          for _, row in ipairs(st[name]) do add(row[1]) end
        end
      end
      if type(st['e']) == 'table' then
        for cid, _ in pairs(st['e']) do add(cid) end
      end
      -- The clock counts current customers (at risk, per perception band, joins held):
      -- the erased customer leaves them, as a forgotten state does.
      if type(st['a']) == 'table' and st['a'][1] == true then dec('at_risk', 1) end
      if type(st['b']) == 'number' then dec('band:' .. string.format('%d', st['b']), 1) end
      -- ... and the value at risk of their segment (domain/value.py, `rv`: [segment, cents])
      if type(st['rv']) == 'table' and type(st['rv'][1]) == 'string' then
        dec('var:' .. st['rv'][1], st['rv'][2])
        dec('ars:' .. st['rv'][1], 1)
      end
      if type(st['j']) == 'table' then
        local names = {'surveys_joined', 'surveys', 'transfers_joined', 'transfers'}
        for k = 1, 4 do dec(names[k], st['j'][k]) end
      end
    end
    redis.call('DEL', KEYS[3 + i])
    states = states + 1
  end
  timers = timers + redis.call('ZREM', KEYS[2], 'c:' .. ARGV[2 + i])
  if #KEYS >= 7 + n then
    redis.call('HDEL', KEYS[4 + n], ARGV[2 + i])
    for k = 5, 7 do redis.call('ZREM', KEYS[k + n], ARGV[2 + i]) end
  end
end
local items = redis.call('LRANGE', KEYS[3], 0, -1)
for index, item in ipairs(items) do
  local nl = string.find(item, '\n', 1, true)
  local header = nl and string.sub(item, 1, nl - 1) or item
  local ok, h = pcall(cjson.decode, header)
  if ok and type(h) == 'table' and type(h[2]) == 'string' then
    local kind, key = h[1], h[2]
    local hit = false
    if kind == 'alert' or kind == 'dead' then
      hit = ids[key] == true
    elseif kind == 'contact' then
      if contacts[key] then
        hit = true
      elseif nl then
        local ok2, view = pcall(cjson.decode, string.sub(item, nl + 1))
        if ok2 and type(view) == 'table' and type(view['customer_id']) == 'string'
            and ids[view['customer_id']] then
          hit = true
          add(key)
        end
      end
    end
    if hit then
      redis.call('LSET', KEYS[3], index - 1, '["erased",null,0]\n')
      outputs = outputs + 1
    end
  end
end
if states + timers + outputs > 0 then
  local pending = {}
  for _, c in ipairs(found) do pending[#pending + 1] = cjson.encode({'tombstone', c, 0}) .. '\n' end
  for _, c in ipairs(known) do
    if not contacts[c] then pending[#pending + 1] = cjson.encode({'tombstone', c, 0}) .. '\n' end
  end
  for i = 1, #pending, 1000 do
    redis.call('RPUSH', KEYS[3], unpack(pending, i, math.min(i + 999, #pending)))
  end
end
if #KEYS >= 8 + n then
  -- the latest contacts: members `[queue, contact_id]`, at most a few thousand
  local latest = redis.call('ZRANGE', KEYS[8 + n], 0, -1)
  local known_set = {}
  for _, c in ipairs(known) do known_set[c] = true end
  for _, member in ipairs(latest) do
    local ok, m = pcall(cjson.decode, member)
    if ok and type(m) == 'table' and (contacts[m[2]] or known_set[m[2]]) then
      redis.call('ZREM', KEYS[8 + n], member)
    end
  end
end
for name, delta in pairs(deltas) do
  if states > 0 then redis.call('HINCRBY', KEYS[1], name, string.format('%d', delta)) end
end
local seq = redis.call('HGET', KEYS[1], 'seq') or ''
local current = tonumber(redis.call('HGET', KEYS[1], 'e') or '0') or 0
local generation = tonumber(ARGV[1])
if generation > current then current = generation end
redis.call('HSET', KEYS[1], 'seq', tostring((tonumber(seq) or 0) + 1), 'w', '',
           'e', string.format('%d', current))
local reply = {states, timers, outputs}
for _, c in ipairs(found) do reply[#reply + 1] = c end
return reply
