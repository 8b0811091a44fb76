-- Node liveness: refresh (or register) an instance, claim dead instances for
-- reaping, and report which instances are dead.
-- KEYS[1] nodes  KEYS[2] reaping  KEYS[3] reapers  KEYS[4] gone
-- ARGV[1] instance  ARGV[2] presence TTL (ms)  ARGV[3] reaper lease (ms)
-- ARGV[4] max claims  ARGV[5] mode ('register' | 'beat')
-- ARGV[6] tombstone retention (ms)
-- In 'beat' mode an instance whose liveness expired or vanished (reaped,
-- store wiped) is NOT refreshed: registered = 0 tells the caller to register
-- under a new instance id and re-register its state. Otherwise expired
-- instances move to `reaping` with a lease owned by the caller (a ZREM that
-- returns 1, so exactly one caller claims each), as do instances whose
-- reaper's lease expired. Returns {registered, claims, reaping, gone}.
local inst = ARGV[1]
local now = now_ms()
local registered = 1
if ARGV[5] == 'register' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), inst)
else
  local score = redis.call('ZSCORE', KEYS[1], inst)
  if (not score) or tonumber(score) <= now then
    registered = 0
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), inst)
  end
end
local claims = {}
if registered == 1 then
  local max = tonumber(ARGV[4])
  local lease = now + tonumber(ARGV[3])
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max)) do
    if redis.call('ZREM', KEYS[1], dead) == 1 then
      redis.call('ZADD', KEYS[2], lease, dead)
      redis.call('HSET', KEYS[3], dead, inst)
      claims[#claims + 1] = dead
    end
  end
  if #claims < max then
    for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max - #claims)) do
      redis.call('ZADD', KEYS[2], lease, dead)
      redis.call('HSET', KEYS[3], dead, inst)
      claims[#claims + 1] = dead
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]))
local reaping = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  reaping[#reaping + 1] = dead
end
return { registered, claims, reaping, redis.call('ZRANGE', KEYS[4], 0, -1) }
