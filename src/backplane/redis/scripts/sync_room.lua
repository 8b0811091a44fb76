-- Make an instance's presence entries in one room equal a given user set,
-- atomically. Used to re-register after a reconnect (moving entries from the
-- previous instance id), to reconcile after failed calls, on shutdown (empty
-- set), and by the reaper of a dead instance (empty set, reason timeout).
-- KEYS[1] presence  KEYS[2] epoch  KEYS[3] seq  KEYS[4] history
-- ARGV[1] room  ARGV[2] room channel  ARGV[3] instance
-- ARGV[4] previous instance ('' none): all its entries are removed
-- ARGV[5] reason of removals  ARGV[6] room idle TTL (s, 0 never; an
-- emptied room starts it, see touch_room)  ARGV[7..] the users the
-- instance must hold
-- Adds first, then removes, so a user kept across the move never flickers:
-- `joined` for a user who had no entry at all, `left` for a user left with
-- none. Returns {added, removed}.
local inst, old = ARGV[3], ARGV[4]
local want = {}
for i = 7, #ARGV do want[ARGV[i]] = true end
local ts = now_ms()
local added, removed = 0, 0
for i = 7, #ARGV do
  local user = ARGV[i]
  local member = user .. '|' .. inst
  if not redis.call('ZSCORE', KEYS[1], member) then
    local before = user_entries(KEYS[1], user)
    redis.call('ZADD', KEYS[1], 0, member)
    added = added + 1
    if before == 0 then
      publish_presence(ARGV[2], 'joined', ARGV[1], user, ts, nil)
    end
  end
end
local touched = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local sep = string.find(member, '|', 1, true)
  if sep then
    local user, owner = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if (owner == inst and not want[user]) or (old ~= '' and owner == old) then
      redis.call('ZREM', KEYS[1], member)
      removed = removed + 1
      touched[#touched + 1] = user
    end
  end
end
local done = {}
for _, user in ipairs(touched) do
  if not done[user] then
    done[user] = true
    if user_entries(KEYS[1], user) == 0 then
      publish_presence(ARGV[2], 'left', ARGV[1], user, ts, { reason = ARGV[5] })
    end
  end
end
if added > 0 or removed > 0 then
  touch_room(KEYS[2], KEYS[3], KEYS[4], KEYS[1], ARGV[6])
end
return { added, removed }
