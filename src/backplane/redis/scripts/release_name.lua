-- Release an instance's hold on a guest name (also used by reapers).
-- KEYS[1] token  KEYS[2] holders
-- ARGV[1] instance
-- The claim disappears with its last holder. Returns the holders left.
redis.call('SREM', KEYS[2], ARGV[1])
local left = redis.call('SCARD', KEYS[2])
if left == 0 then
  redis.call('DEL', KEYS[1])
end
return left
