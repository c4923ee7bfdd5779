-- Stores the latest enriched view of each given contact, unless a newer version is already
-- there (one call stores many: on a Redis Cluster, only keys of one slot go together).
-- KEYS[i] contact hash; ARGV[2i-1] its version, ARGV[2i] its view JSON;
-- the last ARGV the time-to-live in ms. Returns how many views were stored.
local ttl = ARGV[#ARGV]
local stored = 0
for i = 1, #KEYS do
  local version = ARGV[2 * i - 1]
  local current = redis.call('HGET', KEYS[i], 'v')
  if not (current and tonumber(current) >= tonumber(version)) then
    redis.call('HSET', KEYS[i], 'v', version, 'j', ARGV[2 * i])
    redis.call('PEXPIRE', KEYS[i], ttl)
    stored = stored + 1
  end
end
return stored
