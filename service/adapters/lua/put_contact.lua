-- Stores the latest enriched view of a contact, unless a newer version is already there.
-- KEYS[1] contact hash; ARGV[1] version, ARGV[2] view JSON, ARGV[3] time-to-live ms
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'j', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
