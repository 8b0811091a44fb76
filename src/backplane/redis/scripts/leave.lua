-- Remove one presence entry.
-- KEYS[1] presence  KEYS[2] epoch  KEYS[3] seq  KEYS[4] history
-- ARGV[1] room  ARGV[2] user  ARGV[3] instance  ARGV[4] reason  ARGV[5] room channel
-- ARGV[6] room idle TTL (s, 0 never): the last leave starts it (touch_room)
-- Publishes `left` when it was the user's last entry in the room (any
-- instance). Returns 1 when an entry was removed.
local removed = redis.call('ZREM', KEYS[1], ARGV[2] .. '|' .. ARGV[3])
if removed == 1 and user_entries(KEYS[1], ARGV[2]) == 0 then
  publish_presence(ARGV[5], 'left', ARGV[1], ARGV[2], now_ms(), { reason = ARGV[4] })
end
if removed == 1 then
  touch_room(KEYS[2], KEYS[3], KEYS[4], KEYS[1], ARGV[6])
end
return removed
