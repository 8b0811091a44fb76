-- A reaper's lease on a dead instance.
-- KEYS[1] reaping  KEYS[2] reapers  KEYS[3] gone
-- ARGV[1] dead instance  ARGV[2] reaper instance  ARGV[3] 'extend' | 'done'
-- ARGV[4] lease (ms)
-- Only the current owner may extend or finish. 'done' records a tombstone.
-- Returns 1 when applied, 0 when the lease belongs to someone else.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
local now = now_ms()
if ARGV[3] == 'extend' then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], now, ARGV[1])
end
return 1
