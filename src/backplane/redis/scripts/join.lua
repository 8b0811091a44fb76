-- Fix the room's epoch, optionally add a presence entry, return a snapshot.
-- KEYS[1] epoch  KEYS[2] seq  KEYS[3] history  KEYS[4] presence
-- ARGV[1] room  ARGV[2] user  ARGV[3] add ('1'/'0')  ARGV[4] instance
-- ARGV[5] epoch candidate  ARGV[6] room channel
-- ARGV[7] origin node ('' none)  ARGV[8] origin session
-- ARGV[9] room idle TTL (s, 0 never; see touch_room)
-- Publishes `joined` when the entry is the user's first in the room (any
-- instance). Returns {epoch, last id, history (oldest first), entries}.
local epoch = ensure_epoch(KEYS[1], KEYS[2], KEYS[3], ARGV[5])
if ARGV[3] == '1' then
  local before = user_entries(KEYS[4], ARGV[2])
  local added = redis.call('ZADD', KEYS[4], 0, ARGV[2] .. '|' .. ARGV[4])
  if before == 0 and added == 1 then
    publish_presence(ARGV[6], 'joined', ARGV[1], ARGV[2], now_ms(), origin(ARGV[7], ARGV[8]))
  end
end
touch_room(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[9])
return {
  epoch,
  tonumber(redis.call('GET', KEYS[2])),
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('ZRANGE', KEYS[4], 0, -1),
}
